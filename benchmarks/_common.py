"""Shared helpers of the benchmark scripts: paths, pool texts, machine info, report files."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
POOLS = REPO.parent / "shared" / "data" / "pools"
DEFAULT_RESULTS = BENCH_DIR / "results"
DEFAULT_CACHE = BENCH_DIR / "out" / "cache"

log = logging.getLogger("kmq.benchmarks")


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )


def pool_texts(path: Path, view: str = "user") -> tuple[list[str], list[str | None]]:
    """The embedded text (``view``) and the source of every valid row of the pool at ``path``."""
    from kmq.formats import load_pool

    pool = load_pool(path)
    return [ex.text(view) for ex in pool.examples], [ex.source for ex in pool.examples]


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def faiss_options() -> str:
    try:
        import faiss

        return f"compile options: {faiss.get_compile_options().strip()}"
    except (ImportError, AttributeError):
        return "compile options unknown"


def machine_info() -> dict[str, str]:
    mem = "unknown"
    if hasattr(os, "sysconf"):
        with contextlib.suppress(ValueError, OSError):
            mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "cpu": cpu_model(),
        "cores": f"{usable} usable ({os.cpu_count()} logical)",
        "memory": mem,
        "load average (1/5/15 min, at write time)": " ".join(
            f"{v:.2f}" for v in (os.getloadavg() if hasattr(os, "getloadavg") else ())
        ),
        "python": platform.python_version(),
        "kmq": package_version("kmq"),
        "numpy": package_version("numpy"),
        "faiss": f"{package_version('faiss-cpu')} ({faiss_options()})",
        "torch": package_version("torch"),
        "sentence-transformers": package_version("sentence-transformers"),
        "transformers": package_version("transformers"),
    }


def command_line(args: Sequence[str] | None = None) -> str:
    """``python <script> <args>`` with the script relative to the repository (default args:
    this process's)."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(REPO)
    return shlex.join(["python", str(script), *(sys.argv[1:] if args is None else args)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    right = [
        "---:" if any(isinstance(r[i], int | float) for r in rows) else "---"
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(right) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:.3e}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value)


def write_report(
    out: Path,
    name: str,
    title: str,
    body: str,
    total_s: float,
    command: str | None = None,
    run_time_note: str = "",
) -> Path:
    """``<out>/<name>.md``: title, body (tables, notes), the exact command and the machine.

    ``run_time_note`` follows the run-time line (e.g. what a resumed run did not recompute).
    """
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    note = f" {run_time_note}" if run_time_note else ""
    text = (
        f"# {title}\n\n{body.strip()}\n\n## Command\n\n```\n{command or command_line()}\n```\n\n"
        f"Total run time of the script: {total_s:.0f} s.{note}"
        f"\n\n## Machine\n\n{machine}\n"
    )
    path = out / f"{name}.md"
    path.write_text(text, encoding="utf-8")
    log.info("wrote %s", path)
    return path


def save_figure(fig: object, out: Path, name: str) -> Path:
    """``<out>/<name>.png`` at a small size (the figure is closed)."""
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    log.info("wrote %s (%.0f KB)", path, path.stat().st_size / 1024)
    return path
