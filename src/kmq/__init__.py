"""kmq: diversity-first data selection for instruction tuning (Diversify and Conquer)."""

from kmq._version import __version__
from kmq.cache import embed
from kmq.clustering import Clustering, choose_k, kmeans
from kmq.config import SelectConfig
from kmq.encoders import Encoder, get_encoder
from kmq.examples import Example, Message
from kmq.feedback import FeedbackScorer, get_feedback_scorer
from kmq.formats import FieldMap, LoadedPool, load_pool
from kmq.loop import IterateConfig, IterativeSelection
from kmq.outputs import Manifest, SelectRun
from kmq.pipeline import select, select_file
from kmq.quality import QualityScorer, get_quality_scorer
from kmq.scoring import compute_quality
from kmq.selectors import SELECTORS, SelectionResult, Selector, get_selector
from kmq.training import Trainer
from kmq.training.trl import TRLTrainer

__all__ = [
    "SELECTORS",
    "Clustering",
    "Encoder",
    "Example",
    "FeedbackScorer",
    "FieldMap",
    "IterateConfig",
    "IterativeSelection",
    "LoadedPool",
    "Manifest",
    "Message",
    "QualityScorer",
    "SelectConfig",
    "SelectRun",
    "SelectionResult",
    "Selector",
    "TRLTrainer",
    "Trainer",
    "__version__",
    "choose_k",
    "compute_quality",
    "embed",
    "get_encoder",
    "get_feedback_scorer",
    "get_quality_scorer",
    "get_selector",
    "kmeans",
    "load_pool",
    "select",
    "select_file",
]
