"""kmq: diversity-first data selection for instruction tuning (Diversify and Conquer)."""

from kmq._version import __version__
from kmq.clustering import Clustering, choose_k, kmeans
from kmq.config import SelectConfig
from kmq.encoders import Encoder, get_encoder
from kmq.examples import Example, Message
from kmq.formats import FieldMap, LoadedPool, load_pool
from kmq.outputs import SelectRun
from kmq.pipeline import select, select_file
from kmq.selectors import SELECTORS, SelectionResult, Selector, get_selector

__all__ = [
    "SELECTORS",
    "Clustering",
    "Encoder",
    "Example",
    "FieldMap",
    "LoadedPool",
    "Message",
    "SelectConfig",
    "SelectRun",
    "SelectionResult",
    "Selector",
    "__version__",
    "choose_k",
    "get_encoder",
    "get_selector",
    "kmeans",
    "load_pool",
    "select",
    "select_file",
]
