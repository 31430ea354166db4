"""Evaluation: pure metrics, zero-shot classification, retrieval, linear and few-shot probes."""

from .metrics import mean_per_class_recall, retrieval_metrics, topk_accuracy
from .zeroshot import TEMPLATE_SETS, ZeroShotClassifier, load_templates, zero_shot_classifier

__all__ = [
    "TEMPLATE_SETS",
    "ZeroShotClassifier",
    "load_templates",
    "mean_per_class_recall",
    "retrieval_metrics",
    "topk_accuracy",
    "zero_shot_classifier",
]
