"""ONNX Runtime backends of the sentence-transformers encoder (``minilm,backend=onnx``).

The model's transformer, its pooling and its normalisation are exported together with
``torch.onnx.export`` (eager attention, so that ONNX Runtime's transformer optimizer can fuse
the attention, layer norms and GELUs), once, offline, into
``<cache>/models/onnx-<model>-<hash of the model's files and the recipe>/model.onnx``:

- ``onnx``: the fused float32 graph (same vectors as torch to about 1e-6);
- ``onnx-int8``: the fused graph with the weights of its matrix products quantised to int8
  per output channel (ONNX Runtime's dynamic quantisation: activations are quantised on the
  fly), except the feed-forward output projections (``layer.N/output/dense``) of the first
  half of the layers, which stay float32: on MiniLM those three carry most of the int8 error
  (mean cosine to torch 0.9941 with every product in int8, 0.9966 with these kept in float32,
  on 160 ``mix-small`` texts; see benchmarks/results/embedding.md for the full measurement).

ONNX Runtime runs the graph on the CPU with ``threads`` intra-op threads (default: one per
core). Texts are batched in order of length, so a batch pads to similar lengths.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from kmq._imports import require
from kmq.atomic import build_folder
from kmq.cachedir import cache_root
from kmq.errors import KmqError

log = logging.getLogger("kmq")

BACKENDS = ("onnx", "onnx-int8")
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# onnx-int8 keeps in float32 the feed-forward output projection of every layer whose index is
# below this fraction of the layer count (see the module doc).
INT8_FLOAT_FFN_OUT = 0.5
FFN_OUT = re.compile(r"/encoder/layer\.(\d+)/output/dense/MatMul$")


def import_onnxruntime() -> Any:
    """``onnxruntime``, or a :class:`KmqError` with the install line."""
    return require("onnxruntime")


def recipe(backend: str) -> str:
    """What an exported model depends on besides the model's own files."""
    torch = require("torch")
    ort = import_onnxruntime()
    text = f"torch-{torch.__version__}/onnxruntime-{ort.__version__}/opset{OPSET}/fused"
    if backend == "onnx-int8":
        text += f"/int8-dynamic-per-channel/ffn-out-float-below-{INT8_FLOAT_FFN_OUT:g}"
    return text


def exported_model(st: Any, identity: str, backend: str, cache_dir: str | Path | None) -> Path:
    """The ONNX file of the loaded SentenceTransformer ``st`` for ``backend`` (exported now if
    missing). ``identity`` names the model and its weights (the encoder's name)."""
    key = f"{identity}/{recipe(backend)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in identity.split("@")[0])
    root = cache_root(cache_dir)
    folder = root / "models" / f"onnx-{slug}-{backend}-{digest}"
    path = folder / "model.onnx"
    if not path.is_file():
        _export(st, folder, backend)
    return path


def pooled_module(st: Any) -> Any:
    """A torch module: ``st``'s transformer → its pooling (mean or CLS) → L2 normalisation."""
    torch = require("torch")
    modules = [type(m).__name__ for m in st]
    if modules[:2] != ["Transformer", "Pooling"] or not set(modules[2:]) <= {"Normalize"}:
        raise KmqError(
            f"the ONNX backends export Transformer → Pooling [→ Normalize] models; this one "
            f"is {' → '.join(modules)}: use backend=torch"
        )
    mode = st[1].pooling_mode
    if mode not in ("mean", "cls"):
        raise KmqError(
            f"the ONNX backends export mean or cls pooling; this model pools with {mode!r}: "
            "use backend=torch"
        )
    transformer = st[0].auto_model
    transformer.set_attn_implementation("eager")
    module: Any = torch.nn.Module  # torch is imported lazily, so mypy sees it as Any

    class Pooled(module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            hidden = self.transformer(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=token_type_ids,
            ).last_hidden_state
            if mode == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return Pooled().eval()


def _export(st: Any, folder: Path, backend: str) -> None:
    """Export, fuse (and for ``onnx-int8`` quantise) ``st`` into ``folder``, atomically."""
    torch = require("torch")
    optimizer = require("onnxruntime.transformers.optimizer")
    log.info("exporting %s to ONNX (%s) into %s (once)", type(st).__name__, backend, folder)
    module = pooled_module(st)
    sample = st.preprocess(inputs=["an example", "a slightly longer example text"])
    names = [name for name in INPUTS if name in sample]  # some models take no token types
    args = tuple(sample[name].to("cpu") for name in names)

    def build(tmp: Path) -> None:
        raw = tmp / "raw.onnx"
        axes = {name: {0: "batch", 1: "tokens"} for name in names}
        with torch.no_grad():
            torch.onnx.export(
                module,
                args,
                str(raw),
                input_names=names,
                output_names=["embedding"],
                dynamic_axes={**axes, "embedding": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
        config = st[0].auto_model.config
        fused = optimizer.optimize_model(
            str(raw),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            opt_level=0,
        )
        final = tmp / "model.onnx"
        if backend == "onnx-int8":
            fused_path = tmp / "fused.onnx"
            fused.save_model_to_file(str(fused_path))
            _quantize(fused_path, final, int(config.num_hidden_layers))
            fused_path.unlink()
        else:
            fused.save_model_to_file(str(final))
        raw.unlink()

    build_folder(folder, "model.onnx", build)


def float_nodes(graph: Any, layers: int) -> list[str]:
    """Names of the MatMul nodes of ``graph`` that ``onnx-int8`` keeps in float32."""
    kept = []
    for node in graph.node:
        match = FFN_OUT.search(node.name)
        if node.op_type == "MatMul" and match and int(match[1]) < INT8_FLOAT_FFN_OUT * layers:
            kept.append(node.name)
    return kept


def _quantize(source: Path, target: Path, layers: int) -> None:
    """Dynamic int8 quantisation of ``source``'s matrix products (weights per output channel),
    all but :func:`float_nodes`."""
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization")
    excluded = float_nodes(onnx.load(str(source), load_external_data=False).graph, layers)
    if not excluded:
        raise KmqError(f"found no feed-forward output projection to keep in float32 in {source}")
    quantization.quantize_dynamic(
        str(source),
        str(target),
        per_channel=True,
        weight_type=quantization.QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Attention"],
        nodes_to_exclude=excluded,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


class OnnxRunner:
    """An ONNX Runtime session on an exported sentence-transformers graph."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, features: dict[str, Any]) -> np.ndarray:
        feed = {name: np.asarray(features[name], dtype=np.int64) for name in self.inputs}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)
