"""Object priors: generation, smoothing (Box Smooth Module) and the on-disk prior bank.

Importing the package registers the version-0 prior sources (selective_search, random_crops,
ncut_backbone) in ``PRIOR_SOURCE_REGISTRY``.
"""
from . import ncut_source  # noqa: F401  (registers "ncut_backbone")
from .sources import PRIOR_SOURCE_REGISTRY, build_prior_source, build_prior_source_from_cfg

__all__ = ["PRIOR_SOURCE_REGISTRY", "build_prior_source", "build_prior_source_from_cfg"]
