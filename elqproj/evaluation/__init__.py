"""Evaluation: the paper's protocol (datasets, ELQ synthesis, methods, metrics, reports).

``elqproj evaluate`` runs :func:`evaluate` on an :class:`EvaluationConfig`; the metrics come from pyiqa
(``pip install "elqproj[eval]"``). See docs/evaluation.md.
"""

from .config import EvaluationConfig, load_evaluation_config
from .data import NAMED_DATASETS, open_dataset, prepare_hq
from .methods import MethodSpec, parse_method
from .metrics import METRICS, PAPER_METRICS, MetricSuite
from .records import EvaluationResult
from .runner import evaluate

__all__ = ["EvaluationConfig", "load_evaluation_config", "NAMED_DATASETS", "open_dataset", "prepare_hq", "MethodSpec",
           "parse_method", "METRICS", "PAPER_METRICS", "MetricSuite", "EvaluationResult", "evaluate"]
