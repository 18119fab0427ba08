"""OpenVINO backends of the sentence-transformers encoder (``minilm,backend=openvino-bf16``).

The model's transformer, pooling and normalisation (the same module the ONNX backends export,
:func:`kmq.encoders.onnx.pooled_module`) are converted once, offline, with
``openvino.convert_model`` into an OpenVINO IR with float32 weights under
``<cache>/models/openvino-<model>-<hash of the model's files and the recipe>/model.xml``, then
compiled for the CPU at load time:

- ``openvino``: float32 inference (same vectors as torch to about 1e-6);
- ``openvino-bf16``: bfloat16 inference (weights and activations in bf16, accumulation in
  float32) on a CPU with native bf16 matrix units (Intel AMX). OpenVINO itself picks bf16 by
  default on such CPUs; kmq asks for it explicitly and refuses it where the CPU lacks bf16.

``backend=auto`` is ``openvino-bf16`` where OpenVINO is installed and would itself run the CPU
in bf16 (AMX), else ``torch``: see :func:`auto_backend`. The default backend stays ``torch``
(see :mod:`kmq.encoders.sentence_transformers`).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from kmq._imports import require
from kmq.atomic import build_folder
from kmq.cachedir import cache_root
from kmq.errors import KmqError

log = logging.getLogger("kmq")

BACKENDS = ("openvino", "openvino-bf16")
PRECISION = {"openvino": "f32", "openvino-bf16": "bf16"}


def import_openvino() -> Any:
    """``openvino``, or a :class:`KmqError` with the install line."""
    return require("openvino")


def native_bf16() -> bool:
    """Whether OpenVINO runs the CPU in bf16 by default (it does where the CPU has AMX)."""
    try:
        ov = import_openvino()
    except KmqError:
        return False
    return bool(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == ov.Type.bf16)


def auto_backend(device: str | None) -> str:
    """The backend ``auto`` stands for: ``openvino-bf16`` on the CPU (``device`` None or
    ``cpu``) where OpenVINO is installed and its CPU default precision is bf16, else ``torch``
    (the GPU default, and the CPU one where bf16 is emulated or OpenVINO is missing)."""
    if device not in (None, "cpu"):
        return "torch"
    return "openvino-bf16" if native_bf16() else "torch"


def version(ov: Any) -> str:
    """OpenVINO's release, e.g. ``2026.4.1`` (its ``__version__`` adds a build path)."""
    return str(ov.__version__).split("-")[0]


def recipe(backend: str) -> str:
    """What a converted model (and its vectors) depends on besides the model's own files."""
    torch = require("torch")
    ov = import_openvino()
    return f"torch-{torch.__version__}/openvino-{version(ov)}/{PRECISION[backend]}"


def converted_model(st: Any, identity: str, cache_dir: str | Path | None) -> Path:
    """The OpenVINO IR of the loaded SentenceTransformer ``st`` (converted now if missing).
    One float32 IR serves both precisions; ``identity`` names the model and its weights."""
    torch = require("torch")
    ov = import_openvino()
    key = f"{identity.split('/')[0]}/torch-{torch.__version__}/openvino-{version(ov)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in identity.split("@")[0])
    root = cache_root(cache_dir)
    folder = root / "models" / f"openvino-{slug}-{digest}"
    path = folder / "model.xml"
    if not path.is_file():
        _convert(st, folder)
    return path


def _convert(st: Any, folder: Path) -> None:
    """Convert ``st`` (transformer → pooling → normalisation) into ``folder``, atomically."""
    from kmq.encoders.onnx import INPUTS, pooled_module

    torch = require("torch")
    ov = import_openvino()
    log.info("converting %s to OpenVINO into %s (once)", type(st).__name__, folder)
    module = pooled_module(st)
    sample = st.preprocess(inputs=["an example", "a slightly longer example text"])
    example = {name: sample[name].to("cpu") for name in INPUTS if name in sample}

    def build(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings concern no input we feed
            model = ov.convert_model(module, example_input=example)
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)

    build_folder(folder, "model.xml", build)


class OpenVinoRunner:
    """An OpenVINO CPU inference request on a converted sentence-transformers model."""

    def __init__(self, path: Path, backend: str, *, threads: int | None = None) -> None:
        ov = import_openvino()
        core = ov.Core()
        if backend == "openvino-bf16" and "BF16" not in core.get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"
        ):
            raise KmqError("this CPU has no native bf16: use backend=openvino or backend=torch")
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISION[backend],
            "PERFORMANCE_HINT": "LATENCY",  # one stream: every thread on the running batch
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        model = core.read_model(str(path))
        self.inputs = [port.get_any_name() for port in model.inputs]
        self.request = core.compile_model(model, "CPU", config).create_infer_request()

    def run(self, features: dict[str, Any]) -> np.ndarray:
        feed = {name: np.asarray(features[name], dtype=np.int64) for name in self.inputs}
        return np.asarray(self.request.infer(feed)[0], dtype=np.float32)
