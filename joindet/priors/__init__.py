"""Object priors: generation, smoothing (Box Smooth Module) and the on-disk prior bank.

Importing the package registers the version-0 prior sources (selective_search, random_crops,
ncut_backbone, ncut_color, and the label-reading diagnostics gt_boxes and ss_gt_filtered) in
``PRIOR_SOURCE_REGISTRY``.
"""
from . import label_sources  # noqa: F401  (registers "gt_boxes", "ss_gt_filtered": diagnostics)
from . import ncut_source  # noqa: F401  (registers "ncut_backbone", "ncut_color")
from . import random_crops  # noqa: F401  (registers "random_crops")
from . import selective_search  # noqa: F401  (registers "selective_search")
from .sources import PRIOR_SOURCE_REGISTRY, build_prior_source, build_prior_source_from_cfg

__all__ = ["PRIOR_SOURCE_REGISTRY", "build_prior_source", "build_prior_source_from_cfg"]
