"""The GPU path, checked in one run: embedding, IFD scoring and one iterative round on CUDA.

1. MiniLM embeddings of the pool on ``--device`` vs the CPU (per-row cosine; the CPU side on the
   first ``--cpu-rows`` rows only, to keep the run short);
2. IFD of ``--rows`` rows on ``--device`` in bfloat16 vs float32 on the same device (Spearman of
   the scores, max abs NLL difference), and vs the CPU in float32 on the first ``--cpu-rows``
   of them (``--cpu-rows`` bounds the CPU's share of the time budget);
3. one ``kmq iterate`` round (TRL LoRA on SmolLM2, generation by vLLM when it is installed,
   else transformers; ``perplexity`` feedback) on the first ``--rows`` rows of the pool.

Writes ``gpu_check.md`` and ``gpu_check.json`` to ``--out``. Run by ``benchmarks/gpu_check.sh``;
``--device cpu --rows 50`` is a smoke run of the same code on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {message}\n")
    sys.stderr.flush()


def embedding_check(texts: list[str], device: str, cpu_rows: int) -> dict[str, Any]:
    from kmq.encoders import get_encoder

    started = time.perf_counter()
    fast = get_encoder("minilm", device=device, batch_size=256, show_progress=False).encode(texts)
    fast_s = time.perf_counter() - started
    started = time.perf_counter()
    head = texts[:cpu_rows]
    cpu = get_encoder("minilm", device="cpu", batch_size=64, show_progress=False).encode(head)
    cpu_s = time.perf_counter() - started
    cosine = np.sum(fast[: len(head)] * cpu, axis=1)
    return {
        "rows": len(texts),
        "texts/s on the device": len(texts) / fast_s,
        "cpu rows": len(head),
        "texts/s on the cpu": len(head) / cpu_s,
        "min cosine": float(cosine.min()),
        "mean cosine": float(cosine.mean()),
    }


def ifd_check(rows: list[Any], device: str, cpu_rows: int, batch_size: int) -> dict[str, Any]:
    from scipy.stats import spearmanr

    from kmq.quality.lm_scorers import IFDScorer

    def run(dev: str, dtype: str, subset: list[Any]) -> tuple[np.ndarray, np.ndarray, float]:
        scorer = IFDScorer(
            device=dev, dtype=dtype, batch_size=batch_size, show_progress=False, max_length=512
        )
        scorer.score(subset[:2])
        started = time.perf_counter()
        scores = scorer.score(subset)
        seconds = time.perf_counter() - started
        nll = np.concatenate([r.nll for r in scorer.results_])
        log(f"ifd {dev} {dtype}: {len(subset)} rows in {seconds:.1f} s")
        return scores, nll, seconds

    bf16, bf16_nll, bf16_s = run(device, "bfloat16", rows)
    fp32, fp32_nll, fp32_s = run(device, "float32", rows)
    head = rows[:cpu_rows]
    cpu, cpu_nll, cpu_s = run("cpu", "float32", head)
    half = len(rows)
    head_nll = np.concatenate([bf16_nll[: len(head)], bf16_nll[half : half + len(head)]])

    def rho(a: np.ndarray, b: np.ndarray) -> float:
        ok = ~(np.isnan(a) | np.isnan(b))
        return float(spearmanr(a[ok], b[ok]).statistic)

    return {
        "rows": len(rows),
        "bf16 rows/s on the device": len(rows) / bf16_s,
        "fp32 rows/s on the device": len(rows) / fp32_s,
        "cpu fp32 rows": len(head),
        "cpu fp32 rows/s": len(head) / cpu_s,
        "Spearman IFD bf16 vs fp32 (same device, all rows)": rho(bf16, fp32),
        "max abs NLL diff bf16 vs fp32": float(np.nanmax(np.abs(bf16_nll - fp32_nll))),
        "Spearman IFD bf16 vs cpu fp32 (cpu rows)": rho(bf16[: len(head)], cpu),
        "Spearman NLL bf16 vs cpu fp32 (cpu rows)": rho(head_nll, cpu_nll),
        "max abs NLL diff bf16 vs cpu fp32": float(np.nanmax(np.abs(head_nll - cpu_nll))),
    }


def iterate_check(pool: Path, out: Path, device: str, budget: int) -> dict[str, Any]:
    run = out / "iterate"
    command = [
        sys.executable, "-m", "kmq.cli", "--quiet", "iterate", str(pool),
        "--budget", str(budget), "--rounds", "1", "--k", "8", "--seed", "0",
        "--run", str(run), "--device", device, "--feedback", "perplexity",
        "--max-new-tokens", "64", "--cache-dir", str(out / "cache"), "--no-progress",
    ]  # fmt: skip
    log("running " + " ".join(command))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    (out / "iterate.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    state = run / "round-01"
    return {
        "command": " ".join(command[2:]),
        "exit code": done.returncode,
        "seconds": seconds,
        "vllm importable": importlib.util.find_spec("vllm") is not None,
        "round files": sorted(p.name for p in state.iterdir()) if state.is_dir() else [],
        "last log lines": (done.stdout + done.stderr).strip().splitlines()[-5:],
    }


def machine(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda available": torch.cuda.is_available(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["bf16 supported"] = torch.cuda.is_bf16_supported()
    for package in ("transformers", "trl", "peft", "vllm", "sentence_transformers"):
        spec = importlib.util.find_spec(package)
        info[package] = "installed" if spec else "missing"
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=2000, help="IFD rows and iterate pool rows")
    parser.add_argument("--cpu-rows", type=int, default=200, help="rows also run on the CPU")
    parser.add_argument("--embed-rows", type=int, default=0, help="0 = the whole pool")
    parser.add_argument("--budget", type=int, default=64, help="iterate: rows in the round")
    parser.add_argument("--batch-size", type=int, default=32, help="IFD rows per forward pass")
    parser.add_argument("--steps", default="embed,ifd,iterate")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from kmq.formats import load_pool

    source = args.data / "pools" / "mix-small.jsonl.gz"
    if not source.is_file():
        raise SystemExit(f"no pool at {source}: pass the data folder as the first argument")
    pool = load_pool(source)
    examples = pool.examples
    rng = np.random.default_rng(0)
    picks = rng.choice(len(examples), size=min(args.rows, len(examples)), replace=False)
    rows = [examples[i] for i in picks]
    report: dict[str, Any] = {"machine": machine(args.device), "device": args.device}
    steps = args.steps.split(",")
    started = time.perf_counter()
    if "embed" in steps:
        texts = [ex.text("user") for ex in examples]
        texts = texts[: args.embed_rows] if args.embed_rows else texts
        report["embedding"] = embedding_check(texts, args.device, args.cpu_rows)
        log(f"embedding: {report['embedding']}")
    if "ifd" in steps:
        report["ifd"] = ifd_check(rows, args.device, args.cpu_rows, args.batch_size)
        log(f"ifd: {report['ifd']}")
    if "iterate" in steps:
        subset = args.out / "pool.jsonl"
        with subset.open("w", encoding="utf-8") as fh:
            for ex in rows:
                record = {"id": ex.id, "messages": [{"role": m.role, "content": m.content}
                                                    for m in ex.messages]}  # fmt: skip
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        report["iterate"] = iterate_check(subset, args.out, args.device, args.budget)
        log(f"iterate: exit code {report['iterate']['exit code']}")
    report["seconds"] = time.perf_counter() - started
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    lines = [f"# GPU check ({args.device})", ""]
    for section, values in report.items():
        if isinstance(values, dict):
            lines += [f"## {section}", "", "| | |", "|---|---|"]
            lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                      for k, v in values.items()]  # fmt: skip
            lines.append("")
    lines.append(f"Total: {report['seconds']:.0f} s.")
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    failed = report.get("iterate", {}).get("exit code", 0)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
