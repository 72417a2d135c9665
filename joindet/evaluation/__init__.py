"""Evaluation beyond Detectron2's COCOEvaluator: the quality of object priors."""
from .coco import has_compiled_ops
from .prior_quality import evaluate_priors, format_prior_quality_table

__all__ = ["evaluate_priors", "format_prior_quality_table", "has_compiled_ops"]
