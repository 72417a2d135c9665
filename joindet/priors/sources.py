"""
Pluggable sources of the first object priors (prior bank version 0).

A prior source is a callable object registered in ``PRIOR_SOURCE_REGISTRY``::

    source(dataset_dicts, model=None) -> list of (boxes float32 (k_i, 4) XYXY absolute,
                                                  scores float32 (k_i,) in descending order)

aligned with ``dataset_dicts`` (Detectron2 dataset dicts with ``file_name``, ``height``, ``width``,
``image_id``; k_i may be 0), plus ``cache_key() -> dict``: its settings, JSON-serialisable, the
part of the version-0 cache key that the source controls. ``model`` is for sources that run the
detector (NCut on the backbone's features); the others ignore it. Each source class is built the
Detectron2 way: its ``__init__`` is ``@configurable``, so a yacs config builds it as ``cls(cfg, mapper=...)``
(its ``from_config`` reads its keys: :func:`build_prior_source_from_cfg`) and a LazyConfig as ``L(cls)(...)``.

This module holds the registry and its builders; each source lives beside the code it runs:

* ``"selective_search"`` (``SelectiveSearchSource``): DETReg's priors, in ``selective_search.py``;
* ``"random_crops"`` (``RandomCropSource``): UP-DETR-like priors, in ``random_crops.py``;
* ``"ncut_backbone"``, ``"ncut_color"``: NCut priors, in ``ncut_source.py``;
* ``"gt_boxes"``, ``"ss_gt_filtered"``: the label-reading diagnostics, in ``label_sources.py``.

Importing :mod:`joindet.priors` registers them all. ``load_or_compute_version0`` (``version0.py``, what
``PriorRefreshHook`` calls) computes version 0 once per (dataset, source, settings, image set) and reuses it
afterwards; a bank folder that holds version 0 of other settings is an error, never silently overwritten.
"""
from typing import Callable, List, Sequence, Tuple

import numpy as np
from detectron2.utils.registry import Registry

from ..utils.registry import register_by_name

__all__ = [
    "PRIOR_SOURCE_REGISTRY",
    "register_prior_source",
    "build_prior_source",
    "build_prior_source_from_cfg",
    "prior_source_name",
]

PRIOR_SOURCE_REGISTRY = Registry("PRIOR_SOURCE")
PRIOR_SOURCE_REGISTRY.__doc__ = """
Registry of version-0 prior sources: name -> class. ``build_prior_source(name, **kwargs)`` calls
``PRIOR_SOURCE_REGISTRY.get(name)(**kwargs)``; the object is called as
``source(dataset_dicts, model=None)`` (see ``joindet.priors.sources``).
"""

PriorList = List[Tuple[np.ndarray, np.ndarray]]


def register_prior_source(name: str) -> Callable:
    """Class decorator: register a version-0 prior source under ``name``."""
    return register_by_name(PRIOR_SOURCE_REGISTRY, name, "prior source")


def build_prior_source(name: str, **kwargs):
    """
    Build the prior source registered as ``name`` with keyword arguments ``kwargs``.

    Raises:
        ValueError: no source is registered under ``name`` (the message lists those that are).
    """
    if name not in PRIOR_SOURCE_REGISTRY:
        known = sorted(n for n, _ in PRIOR_SOURCE_REGISTRY)
        raise ValueError(f"unknown prior source {name!r}; registered prior sources: {known}")
    return PRIOR_SOURCE_REGISTRY.get(name)(**kwargs)


def build_prior_source_from_cfg(cfg, mapper=None):
    """The version-0 source named by ``JOINDET.PRIORS.INIT_SOURCE``, built from the yacs ``cfg`` by its class
    (Detectron2's ``@configurable``: ``cls(cfg, mapper=mapper)``, the class's ``from_config`` reading its keys;
    ``mapper``: the test-time mapper, for sources that run the model)."""
    name = cfg.JOINDET.PRIORS.INIT_SOURCE
    if name not in PRIOR_SOURCE_REGISTRY:
        known = sorted(n for n, _ in PRIOR_SOURCE_REGISTRY)
        raise ValueError(f"JOINDET.PRIORS.INIT_SOURCE: unknown prior source {name!r}; registered: {known}")
    return PRIOR_SOURCE_REGISTRY.get(name)(cfg, mapper=mapper)


def prior_source_name(source) -> str:
    """The name ``source``'s class is registered under, else its qualified class name."""
    for name, cls in PRIOR_SOURCE_REGISTRY:
        if type(source) is cls:
            return name
    cls = type(source)
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_dataset_dicts(dataset_dicts: Sequence[dict], keys: Sequence[str]) -> None:
    if not isinstance(dataset_dicts, Sequence) or isinstance(dataset_dicts, (str, bytes)):
        raise ValueError(f"dataset_dicts must be a list of dicts, got {type(dataset_dicts).__name__}")
    for i, d in enumerate(dataset_dicts):
        if not isinstance(d, dict):
            raise ValueError(f"dataset_dicts[{i}] must be a dict, got {type(d).__name__}")
        missing = [k for k in keys if k not in d]
        if missing:
            raise ValueError(f"dataset_dicts[{i}] lacks the keys {missing} (it has {sorted(d)})")
