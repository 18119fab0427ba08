"""CPU inference backends for the LM scorers, side by side on the same rows, against torch fp32.

Every candidate scores the same seeded ``--n`` rows of the pool for IFD (both passes: NLL(y|x)
and NLL(y)) with kmq's own text, tokenisation and ``--max-length`` window
(:func:`kmq.quality.lm.score_windows`), so they differ only in the arithmetic. The rows are
split into ``--blocks`` blocks; each block is scored by every candidate in turn (the order
rotates from block to block), so machine load hits every candidate alike. Generation: greedy,
``--gen-tokens`` new tokens for ``--gen-prompts`` prompts, alternating the same way.

Candidates: torch fp32 (the reference: length-sorted batches, dynamic padding,
``inference_mode``, logits only from the first response token on), torch bf16, CTranslate2
(int8 / int8_float32 / float32), ONNX Runtime (fp32, and int8 by dynamic quantisation) and
OpenVINO (fp32) on a ``torch.onnx`` export without a KV cache (scoring only), llama.cpp via
``llama-cpp-python`` on the packaged GGUF file (when installed). A candidate whose package is
missing is listed as such.

    python benchmarks/lm_backend.py --n 200
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    POOLS,
    log,
    markdown_table,
    package_version,
    save_figure,
    setup_logging,
    write_report,
)

from kmq.backends import get_lm_backend
from kmq.backends.llama_cpp_lm import logits_nll
from kmq.examples import Example
from kmq.formats import load_pool
from kmq.models import converted_model_dir
from kmq.quality.lm import Window, length_batches, score_windows

WindowsNLL = Callable[[list[Window]], np.ndarray]
Generate = Callable[[list[Any], int], list[str]]


@dataclass
class Candidate:
    name: str
    load: Callable[[], tuple[WindowsNLL, Generate | None]]
    missing: str = ""
    score_s: float = 0.0
    load_s: float = 0.0
    note: str = ""
    gen_s: float = 0.0
    nll: list[np.ndarray] = field(default_factory=list)
    generations: list[str] = field(default_factory=list)
    run: WindowsNLL | None = None
    generate: Generate | None = None


def sample(examples: list[Example], n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(examples), size=min(n, len(examples)), replace=False)
    return [examples[i] for i in picks]


def softmax_nll(logits: np.ndarray, windows: Sequence[Window]) -> np.ndarray:
    """Mean NLL of each window's response from (batch, time, vocab) logits, in float64."""
    return np.array(
        [logits_nll(logits[row], len(c), r) for row, (c, r) in enumerate(windows)],
        dtype=np.float64,
    )


def padded(windows: Sequence[Window], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(c) + len(r) for c, r in windows)
    ids = np.full((len(windows), width), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, (c, r) in enumerate(windows):
        ids[row, : len(c) + len(r)] = c + r
        mask[row, : len(c) + len(r)] = 1
    return ids, mask


def batched(forward: Callable[[list[Window]], np.ndarray], batch_size: int) -> WindowsNLL:
    def run(windows: list[Window]) -> np.ndarray:
        out = np.empty(len(windows), dtype=np.float64)
        for batch in length_batches(windows, batch_size):
            out[batch] = forward([windows[i] for i in batch])
        return out

    return run


def kmq_backend(name: str, batch_size: int, cache: Path, **options: Any) -> Callable[..., Any]:
    def load() -> tuple[WindowsNLL, Generate]:
        backend = get_lm_backend(name, batch_size=batch_size, cache_dir=cache, **options)
        return (
            lambda windows: backend.windows_nll(windows),
            lambda prompts, tokens: backend.generate(prompts, max_new_tokens=tokens),
        )

    return load


def onnx_export(cache: Path) -> Path:
    """SmolLM2 exported by ``torch.onnx`` (logits of every position, no KV cache), cached."""
    path = cache / "onnx" / "smollm2-fp32.onnx"
    if path.is_file():
        return path
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(converted_model_dir(cache_dir=cache))
    model.eval()

    class Logits(torch.nn.Module):
        def __init__(self, lm: Any) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.lm(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    ids = torch.ones((2, 16), dtype=torch.long)
    axes = {0: "batch", 1: "time"}
    with torch.no_grad():
        torch.onnx.export(
            Logits(model),
            (ids, torch.ones_like(ids)),
            str(tmp),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": axes},
            opset_version=17,
            dynamo=False,
        )
    tmp.rename(path)
    return path


def onnx_quantised(cache: Path) -> Path:
    path = cache / "onnx" / "smollm2-int8.onnx"
    if not path.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = path.with_suffix(".tmp.onnx")
        quantize_dynamic(onnx_export(cache), tmp, weight_type=QuantType.QInt8)
        tmp.rename(path)
    return path


def ort_loader(cache: Path, pad_id: int, batch_size: int, quantised: bool) -> Callable[..., Any]:
    def load() -> tuple[WindowsNLL, None]:
        import onnxruntime as ort

        path = onnx_quantised(cache) if quantised else onnx_export(cache)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def forward(windows: list[Window]) -> np.ndarray:
            ids, mask = padded(windows, pad_id)
            (logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
            return softmax_nll(logits, windows)

        return batched(forward, batch_size), None

    return load


def openvino_loader(cache: Path, pad_id: int, batch_size: int) -> Callable[..., Any]:
    def load() -> tuple[WindowsNLL, None]:
        import openvino as ov

        compiled = ov.Core().compile_model(str(onnx_export(cache)), "CPU")

        def forward(windows: list[Window]) -> np.ndarray:
            ids, mask = padded(windows, pad_id)
            logits = compiled({"input_ids": ids, "attention_mask": mask})[0]
            return softmax_nll(np.asarray(logits), windows)

        return batched(forward, batch_size), None

    return load


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = ~(np.isnan(a) | np.isnan(b))
    return float(spearmanr(a[ok], b[ok]).statistic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, default=POOLS / "mix-small.jsonl.gz")
    parser.add_argument("--n", type=int, default=200, help="rows in the seeded sample")
    parser.add_argument("--blocks", type=int, default=4, help="alternation blocks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--gen-prompts", type=int, default=16)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--only", help="comma-separated candidate names (default: all)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--name", default="lm_backend", help="results file stem")
    args = parser.parse_args()
    setup_logging()
    started = time.perf_counter()

    pool = load_pool(args.pool)
    rows = sample(pool.examples, args.n, args.seed)
    reference = get_lm_backend("torch", batch_size=args.batch_size, cache_dir=args.cache_dir)
    _, tokenizer = reference.lm  # type: ignore[attr-defined]
    pad = tokenizer.pad_token_id
    b, cache = args.batch_size, args.cache_dir
    have = {m: importlib.util.find_spec(m) is not None for m in ("ctranslate2", "onnxruntime")}
    have |= {m: importlib.util.find_spec(m) is not None for m in ("openvino", "llama_cpp")}
    candidates = [
        Candidate("torch fp32", kmq_backend("torch", b, cache)),
        Candidate("torch bf16", kmq_backend("torch", b, cache, dtype="bfloat16")),
        *(
            Candidate(
                f"ctranslate2 {ct}",
                kmq_backend("ctranslate2", b, cache, compute_type=ct),
                "" if have["ctranslate2"] else "pip install ctranslate2",
            )
            for ct in ("int8", "int8_float32", "int8_bfloat16", "bfloat16", "float32")
        ),
        Candidate(
            "onnxruntime fp32",
            ort_loader(cache, pad, b, quantised=False),
            "" if have["onnxruntime"] else "pip install onnxruntime onnx",
        ),
        Candidate(
            "onnxruntime int8",
            ort_loader(cache, pad, b, quantised=True),
            "" if have["onnxruntime"] else "pip install onnxruntime onnx",
        ),
        Candidate(
            "openvino (its CPU default: bf16 on AMX)",
            openvino_loader(cache, pad, b),
            "" if have["openvino"] else "pip install openvino",
        ),
        Candidate(
            "llama.cpp Q4_1 (GGUF)",
            kmq_backend("llama-cpp", b, cache, threads=args.threads),
            "" if have["llama_cpp"] else "pip install llama-cpp-python (not installed)",
        ),
    ]
    if args.only:
        wanted = {"torch fp32", *args.only.split(",")}
        candidates = [c for c in candidates if c.name in wanted]
    for c in candidates:
        if c.missing:
            continue
        begun = time.perf_counter()
        try:
            c.run, c.generate = c.load()
            warm = rows[:2]
            score_windows(
                tokenizer,
                [r.prompt for r in warm],
                [r.response for r in warm],
                max_length=args.max_length,
                run=c.run,
            )
        except Exception as exc:  # a candidate that fails is reported, not fatal
            c.missing = f"failed to load: {type(exc).__name__}: {exc}"[:160]
        c.load_s = time.perf_counter() - begun
        log.info("%s: loaded and warmed up in %.1f s %s", c.name, c.load_s, c.missing)

    gen_rows = sample(pool.examples, args.gen_prompts, args.seed + 1)
    gen_blocks = np.array_split(np.arange(len(gen_rows)), 2)
    for k, block in enumerate(gen_blocks):
        makers = [c for c in candidates if c.generate is not None and not c.missing]
        for j in range(len(makers)):
            c = makers[(j + k) % len(makers)]
            assert c.generate is not None
            begun = time.perf_counter()
            try:
                c.generations += c.generate([gen_rows[i].prompt for i in block], args.gen_tokens)
            except Exception as exc:
                c.generate = None
                c.generations = []
                c.note = f"generation failed: {type(exc).__name__}: {exc}"[:160]
                continue
            c.gen_s += time.perf_counter() - begun
        gc.collect()

    blocks = np.array_split(np.arange(len(rows)), args.blocks)
    tokens = {"context": 0, "response": 0}
    for k, block in enumerate(blocks):
        prompts = [rows[i].prompt for i in block]
        responses = [rows[i].response for i in block]
        live = [c for c in candidates if not c.missing]
        for j in range(len(live)):
            c = live[(j + k) % len(live)]
            assert c.run is not None
            begun = time.perf_counter()
            try:
                with_prompt = score_windows(
                    tokenizer, prompts, responses, max_length=args.max_length, run=c.run
                )
                without = score_windows(
                    tokenizer, [None] * len(block), responses, max_length=args.max_length, run=c.run
                )
            except Exception as exc:
                c.missing = f"failed while scoring: {type(exc).__name__}: {exc}"[:160]
                continue
            c.score_s += time.perf_counter() - begun
            c.nll.append(np.concatenate([with_prompt.nll, without.nll]))
            if c is candidates[0]:
                for part in (with_prompt, without):
                    tokens["context"] += int(part.context_tokens.sum())
                    tokens["response"] += int(part.response_tokens.sum())
        log.info(
            "block %d of %d done (%.0f s so far)", k + 1, len(blocks), time.perf_counter() - started
        )
        report(
            args, candidates, tokenizer, tokens, k + 1, len(gen_rows), time.perf_counter() - started
        )


def report(
    args: argparse.Namespace,
    candidates: list[Candidate],
    tokenizer: Any,
    tokens: dict[str, int],
    blocks_done: int,
    gen_prompts: int,
    seconds: float,
) -> None:
    """Write the table for the blocks done so far (generation columns once it has run)."""
    ref = candidates[0]
    ref_nll = np.concatenate(ref.nll)
    n_rows = len(ref_nll) // 2
    ref_ifd = ifd_of(ref.nll)
    total_tokens = tokens["context"] + tokens["response"]
    table: list[list[Any]] = []
    for c in candidates:
        if len(c.nll) < blocks_done:
            table.append([c.name, *["—"] * 8, f"{c.load_s:.0f}" if c.load_s else "—", c.missing])
            continue
        nll = np.concatenate(c.nll)
        gen_tokens = sum(len(tokenizer(t)["input_ids"]) for t in c.generations)
        same = sum(a == b for a, b in zip(c.generations, ref.generations, strict=False))
        table.append(
            [
                c.name,
                n_rows / c.score_s,
                total_tokens / c.score_s,
                ref.score_s / c.score_s,
                spearman(ref_nll, nll),
                float(np.nanmax(np.abs(ref_nll - nll))),
                spearman(ref_ifd, ifd_of(c.nll)),
                gen_tokens / c.gen_s if c.generations else "—",
                f"{same}/{len(c.generations)}" if c.generations else "—",
                f"{c.load_s:.0f}",
                c.missing or c.note,
            ]
        )
    headers = [
        "backend",
        "IFD rows/s",
        "IFD tokens/s",
        "× torch fp32",
        "Spearman NLL",
        "max abs ΔNLL",
        "Spearman IFD",
        "gen tokens/s",
        "same greedy text",
        "load s",
        "note",
    ]
    plot(table, args.out, args.name)
    done = [r for r in table if isinstance(r[3], float) and r[4] >= 0.99]
    best = max(done, key=lambda r: r[1])
    projected = 8 * 512 / best[1]
    partial = (
        f" **Partial: {blocks_done} of {args.blocks} blocks scored when the run was stopped.**"
        if blocks_done < args.blocks
        else ""
    )
    body = (
        f"{n_rows} rows sampled (seed {args.seed}) from `{args.pool.name}`, max_length "
        f"{args.max_length}, batch size {args.batch_size}; both IFD passes (NLL(y|x), NLL(y)) per "
        f"row: {total_tokens:,} tokens fed ({tokens['response']:,} response tokens scored). "
        f"{args.blocks} blocks, every candidate on every block in rotating order.{partial} "
        f"Fidelity is per row against torch fp32: Spearman and max abs difference of the "
        f"{2 * n_rows} NLLs (both passes), Spearman of the {n_rows} IFD values. Generation: "
        f"greedy, {args.gen_tokens} new tokens for {gen_prompts} prompts (batch "
        f"{args.batch_size}; llama.cpp one at a time); `same greedy text` counts outputs "
        "identical to torch fp32's. `load s`: loading, converting (first use) and warming up.\n\n"
        + markdown_table(headers, table)
        + f"\n\nFastest at Spearman NLL ≥ 0.99: **{best[0]}**, {best[3]:.2f}× torch fp32. "
        f"Projected IFD for the candidates of a 512-row kMQ selection from mix-small (k = 32, "
        f"8 candidates per pick: 4,096 rows) at its measured rate: {projected / 60:.1f} min "
        f"(torch fp32: {8 * 512 / table[0][1] / 60:.1f} min), model load and conversion aside.\n\n"
        "The ONNX models are `torch.onnx` exports of the converted SmolLM2 (logits of every "
        "position, no KV cache), so they are not used for generation; `onnxruntime int8` is "
        "`quantize_dynamic` (int8 weights) of that export. llama.cpp runs the packaged GGUF "
        "file (Q4_1 weights, which the torch model is dequantised from) one row at a time "
        "(kmq's `llama-cpp` backend). "
        "Versions: "
        + ", ".join(
            f"{p} {package_version(p)}"
            for p in ("ctranslate2", "onnxruntime", "openvino", "llama-cpp-python", "torch")
        )
        + ".\n\nAbsolute rates depend on what else ran on the machine (the load average below); "
        "the ratios are side by side in one run."
    )
    write_report(args.out, args.name, "LM inference backends (CPU)", body, seconds)


def ifd_of(nll_blocks: list[np.ndarray]) -> np.ndarray:
    """IFD per row from per-block [NLL(y|x) ..., NLL(y) ...] arrays."""
    out = []
    for block in nll_blocks:
        half = len(block) // 2
        out.append(np.exp(block[:half] - block[half:]))
    return np.concatenate(out)


def plot(table: list[list[Any]], out: Path, name: str = "lm_backend") -> None:
    import matplotlib.pyplot as plt

    done = [r for r in table if isinstance(r[3], float)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in done:
        ax.scatter(r[3], r[4], s=40)
        ax.annotate(r[0], (r[3], r[4]), fontsize=8, xytext=(4, 2), textcoords="offset points")
    ax.axhline(0.99, color="grey", lw=0.8, ls="--")
    ax.axvline(3.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("IFD throughput, × torch fp32 (same rows, one run)")
    ax.set_ylabel("per-row NLL Spearman vs torch fp32")
    ax.set_title("LM backends on CPU: speed vs fidelity (target: right of 3×, above 0.99)")
    save_figure(fig, out, name)


if __name__ == "__main__":
    main()
