"""
Pluggable sources of the first object priors (prior bank version 0).

A prior source is a callable object registered in ``PRIOR_SOURCE_REGISTRY``::

    source(dataset_dicts, model=None) -> list of (boxes float32 (k_i, 4) XYXY absolute,
                                                  scores float32 (k_i,) in descending order)

aligned with ``dataset_dicts`` (Detectron2 dataset dicts with ``file_name``, ``height``, ``width``,
``image_id``; k_i may be 0), plus ``cache_key() -> dict``: its settings, JSON-serialisable, the
part of the version-0 cache key that the source controls. ``model`` is for sources that run the
detector (NCut on the backbone's features); the sources here ignore it.

Registered here:

* ``"selective_search"`` (``SelectiveSearchSource``): DETReg's priors, see ``selective_search.py``;
* ``"random_crops"`` (``RandomCropSource``): UP-DETR-like priors, see ``random_crops.py``.

``load_or_compute_version0`` (what ``PriorRefreshHook`` calls) computes version 0 once per (dataset,
source, settings, image set) and reuses it afterwards; a bank folder that holds version 0 of other
settings is an error, never silently overwritten.
"""
import functools
import hashlib
import json
import logging
import multiprocessing
import numbers
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.utils.registry import Registry

from ..utils.progress import format_seconds, log_progress
from .bank import PriorBank, PriorVersion
from .generation import priors_to_arrays, publish_version, shard
from .random_crops import _check_frac, image_rng, random_crop_boxes
from .selective_search import _check_settings, boxes_for_image_file

__all__ = [
    "PRIOR_SOURCE_REGISTRY",
    "register_prior_source",
    "build_prior_source",
    "build_prior_source_from_cfg",
    "prior_source_name",
    "SelectiveSearchSource",
    "RandomCropSource",
    "version0_cache_key",
    "load_or_compute_version0",
]

logger = logging.getLogger("joindet")

PRIOR_SOURCE_REGISTRY = Registry("PRIOR_SOURCE")
PRIOR_SOURCE_REGISTRY.__doc__ = """
Registry of version-0 prior sources: name -> class. ``build_prior_source(name, **kwargs)`` calls
``PRIOR_SOURCE_REGISTRY.get(name)(**kwargs)``; the object is called as
``source(dataset_dicts, model=None)`` (see ``joindet.priors.sources``).
"""

PriorList = List[Tuple[np.ndarray, np.ndarray]]


def register_by_name(registry, name: str, what: str) -> Callable:
    """
    Class decorator: register a class in a Detectron2 ``registry`` under ``name`` (``Registry.register``
    would use the class name; configs name these components in snake case). ``what`` names the kind of
    component in the errors (an empty or already registered name is refused).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {what} name must be a non-empty string, got {name!r}")

    def deco(cls):
        if name in registry:
            raise ValueError(f"a {what} named {name!r} is already registered")
        registry._do_register(name, cls)
        return cls

    return deco


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


def build_prior_source_from_cfg(cfg, mapper):
    """The version-0 source named by ``JOINDET.PRIORS.INIT_SOURCE``, its arguments taken from the config by
    the class's ``from_config(cfg, mapper)`` (``mapper``: the test-time mapper, for sources that run the model)."""
    name = cfg.JOINDET.PRIORS.INIT_SOURCE
    if name not in PRIOR_SOURCE_REGISTRY:
        known = sorted(n for n, _ in PRIOR_SOURCE_REGISTRY)
        raise ValueError(f"JOINDET.PRIORS.INIT_SOURCE: unknown prior source {name!r}; registered: {known}")
    return build_prior_source(name, **PRIOR_SOURCE_REGISTRY.get(name).from_config(cfg, mapper))


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


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def _ss_task(settings: Tuple, item: Tuple[str, Optional[int], Optional[int]]):
    topk, min_side, mode = settings
    file_name, height, width = item
    return boxes_for_image_file(file_name, height, width, topk, min_side, mode, num_threads=1)


@register_prior_source("selective_search")
class SelectiveSearchSource:
    """
    Selective search priors (DETReg): ``selective_search_boxes`` on every image, read from its
    ``file_name``.

    An image that cannot be read (or whose size differs from the dict's height/width) gets zero
    priors and a warning naming the file; ``last_failed`` lists ``(file_name, problem)`` of the
    last call.

    Args:
        topk: proposals kept per image.
        min_side: the shorter side the image is downscaled to before the search (None: full size).
        num_workers: worker processes (a ``multiprocessing`` pool, one OpenCV thread each);
            0 computes in the calling process.
        mode: "fast" (DETReg) or "quality".
        start_method: the pool's start method; None: "forkserver" where available (workers forked
            from a clean server process: a plain fork of a process whose OpenCV thread pool has run
            leaves the children deadlocked in OpenCV), else the platform's default.
    """

    def __init__(self, topk: int = 30, min_side: Optional[int] = 128, num_workers: int = 2,
                 mode: str = "fast", start_method: Optional[str] = None):
        self.topk, self.min_side, self.mode, _ = _check_settings(topk, min_side, mode, 1)
        if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.num_workers = int(num_workers)
        if start_method is not None and start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method must be one of {multiprocessing.get_all_start_methods()} or None, "
                f"got {start_method!r}"
            )
        self.start_method = start_method
        self.last_failed: List[Tuple[str, str]] = []

    @classmethod
    def from_config(cls, cfg, mapper=None) -> Dict[str, Any]:
        p = cfg.JOINDET.PRIORS
        return {"topk": p.TOPK, "min_side": p.MIN_SIDE, "num_workers": p.NUM_WORKERS}

    def cache_key(self) -> Dict[str, Any]:
        """The settings that determine the boxes (not num_workers, which does not change them)."""
        return {"topk": self.topk, "min_side": self.min_side, "mode": self.mode, "impl": 1}

    def __repr__(self) -> str:
        return (f"SelectiveSearchSource(topk={self.topk}, min_side={self.min_side}, "
                f"mode={self.mode!r}, num_workers={self.num_workers})")

    def _context(self):
        method = self.start_method
        if method is None and "forkserver" in multiprocessing.get_all_start_methods():
            method = "forkserver"
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload([__name__])  # imported once in the server, not per worker
        return ctx

    def __call__(self, dataset_dicts: Sequence[dict], model=None) -> PriorList:
        """
        Args:
            dataset_dicts: dicts with ``file_name`` (and ``height``/``width``, checked if present).
            model: unused.

        Returns:
            per image (aligned with ``dataset_dicts``): boxes float32 (k, 4) XYXY absolute and
            scores float32 (k,) strictly decreasing, k <= topk.
        """
        _check_dataset_dicts(dataset_dicts, ["file_name"])
        items = [(d["file_name"], d.get("height"), d.get("width")) for d in dataset_dicts]
        task = functools.partial(_ss_task, (self.topk, self.min_side, self.mode))
        start = time.perf_counter()
        results: PriorList = []
        self.last_failed = []

        def collect(outputs):
            for (file_name, _, _), (boxes, scores, problem) in zip(items, outputs):
                if problem is not None:
                    logger.warning(f"selective search: {file_name}: {problem}; it gets no priors")
                    self.last_failed.append((file_name, problem))
                results.append((boxes, scores))
                log_progress("selective search", len(results), len(items), start)

        if not items:
            return results
        if self.num_workers == 0:
            collect(task(item) for item in items)
        else:
            workers = min(self.num_workers, len(items))
            chunksize = max(1, min(32, len(items) // (workers * 8)))
            with self._context().Pool(workers, initializer=_init_worker) as pool:
                collect(pool.imap(task, items, chunksize=chunksize))
        num_boxes = sum(b.shape[0] for b, _ in results)
        logger.info(
            f"selective search: {len(results)} images in "
            f"{format_seconds(time.perf_counter() - start)}, "
            f"{num_boxes / len(results):.1f} priors per image, "
            f"{len(self.last_failed)} unreadable images (no priors)"
        )
        return results


@register_prior_source("random_crops")
class RandomCropSource:
    """
    Random crop priors (UP-DETR-like): ``random_crop_boxes(height, width, topk, image_rng(seed,
    image_id), min_frac, max_frac)`` per image, from the dicts' sizes (no image is read).

    Scores are all 1.0: random crops carry no ranking, and equal scores keep the Box Smooth
    Module and any top-K selection from favouring some crops by chance.

    Args:
        topk: boxes per image.
        seed: the base seed; an image's boxes depend only on (seed, image_id).
        min_frac, max_frac: the range of a box side as a fraction of the image side.
    """

    def __init__(self, topk: int = 30, seed: int = 0, min_frac: float = 0.1, max_frac: float = 0.8):
        if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:
            raise ValueError(f"topk must be an integer >= 1, got {topk!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.topk, self.seed = int(topk), int(seed)
        self.min_frac, self.max_frac = _check_frac(min_frac, max_frac)

    @classmethod
    def from_config(cls, cfg, mapper=None) -> Dict[str, Any]:
        return {"topk": cfg.JOINDET.PRIORS.TOPK, "seed": cfg.JOINDET.PRIORS.SEED}

    def cache_key(self) -> Dict[str, Any]:
        return {"topk": self.topk, "seed": self.seed, "min_frac": self.min_frac,
                "max_frac": self.max_frac, "impl": 1}

    def __repr__(self) -> str:
        return (f"RandomCropSource(topk={self.topk}, seed={self.seed}, "
                f"min_frac={self.min_frac}, max_frac={self.max_frac})")

    def __call__(self, dataset_dicts: Sequence[dict], model=None) -> PriorList:
        """
        Args:
            dataset_dicts: dicts with ``height``, ``width`` and integer ``image_id``.
            model: unused.

        Returns:
            per image: boxes float32 (topk, 4) XYXY absolute and scores float32 (topk,) all 1.0.
        """
        _check_dataset_dicts(dataset_dicts, ["height", "width", "image_id"])
        results = []
        for d in dataset_dicts:
            rng = image_rng(self.seed, d["image_id"])
            boxes = random_crop_boxes(d["height"], d["width"], self.topk, rng, self.min_frac, self.max_frac)
            results.append((boxes, np.ones((self.topk,), np.float32)))
        return results


def _image_ids(dataset_dicts: Sequence[dict]) -> np.ndarray:
    _check_dataset_dicts(dataset_dicts, ["image_id"])
    ids = []
    for i, d in enumerate(dataset_dicts):
        image_id = d["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, numbers.Integral):
            raise ValueError(
                f"dataset_dicts[{i}]['image_id'] must be an integer (the prior bank is indexed by "
                f"integer ids), got {image_id!r}"
            )
        ids.append(int(image_id))
    ids = np.asarray(ids, dtype=np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"duplicate image ids in dataset_dicts: {uniq[counts > 1][:10].tolist()}")
    return ids


def version0_cache_key(source, dataset_dicts: Sequence[dict], dataset_name: str) -> Dict[str, Any]:
    """
    The key that identifies version-0 priors:
    ``{"dataset", "source", "settings" (source.cache_key()), "image_ids_sha1"}``, where the sha1 is
    of the sorted image ids as little-endian int64. JSON round-tripped, so it compares equal to the
    copy stored in a bank's meta.json.
    """
    if not isinstance(dataset_name, str) or not dataset_name:
        raise ValueError(f"dataset_name must be a non-empty string, got {dataset_name!r}")
    ids = np.sort(_image_ids(dataset_dicts)).astype("<i8")
    key = {
        "dataset": dataset_name,
        "source": prior_source_name(source),
        "settings": source.cache_key(),
        "image_ids_sha1": hashlib.sha1(ids.tobytes()).hexdigest(),
    }
    try:
        return json.loads(json.dumps(key, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{prior_source_name(source)}.cache_key() must be JSON-serialisable: {e}") from e


def load_or_compute_version0(
    bank: PriorBank,
    source,
    dataset_dicts: Sequence[dict],
    dataset_name: str,
    model=None,
) -> PriorVersion:
    """
    Version 0 of ``bank``: read it if it was made with the same key, else compute and write it.

    The key is ``version0_cache_key(source, dataset_dicts, dataset_name)``. If version 0 exists
    and its ``meta["info"]["source_key"]`` equals the key, it is returned without calling the
    source. If it exists with another key, a ValueError is raised (the bank folder holds priors of
    other settings; point the run at another folder or delete that one). Otherwise the source is
    called (with ``model``) and its priors are written as version 0 with
    ``info = {"source_key": key, "source": <registered name>, "compute_seconds": ...}``.

    Every process of a run calls it (``PriorRefreshHook`` does): each computes its shard of the
    images (:func:`joindet.priors.generation.shard`) and writes it as its shard of the version, the main
    process commits the version (it is the bank's only writer; no process gathers the priors:
    :func:`joindet.priors.generation.publish_version`) and all wait for it. One process alone is a
    world of one.

    Returns:
        The version, opened with ``mmap=True``.
    """
    if not isinstance(bank, PriorBank):
        raise ValueError(f"bank must be a PriorBank, got {type(bank).__name__}")
    key = version0_cache_key(source, dataset_dicts, dataset_name)
    if 0 in bank.versions():
        version = bank.read(0)
        stored = version.meta.get("info", {}).get("source_key")
        if stored == key:
            logger.info(f"prior bank {bank.root}: reusing version 0 ({version.num_boxes} priors "
                        f"of {len(version)} images) from {key['source']}")
            return version
        raise ValueError(
            f"prior bank folder {bank.root} already holds version 0 made with other settings "
            f"(stored key {json.dumps(stored, sort_keys=True)}, requested key "
            f"{json.dumps(key, sort_keys=True)}); use another bank folder (JOINDET.PRIORS.BANK_DIR) or "
            f"delete {bank.version_path(0)} to recompute"
        )

    name = prior_source_name(source)
    logger.info(f"prior bank {bank.root}: computing version 0 of {dataset_name} "
                f"({len(dataset_dicts)} images) with {source!r}")
    start = time.perf_counter()
    local = shard(dataset_dicts)
    results = list(source(local, model=model))
    if len(results) != len(local):
        raise ValueError(f"prior source {name} returned {len(results)} results for {len(local)} images")
    shard_arrays = priors_to_arrays({d["image_id"]: r for d, r in zip(local, results)})
    del results
    seconds = time.perf_counter() - start
    info = {"source_key": key, "source": name, "compute_seconds": round(seconds, 3)}
    publish_version(bank, 0, shard_arrays, info=info)  # each process writes its shard, the main one commits
    del shard_arrays
    logger.info(f"prior bank {bank.root}: version 0 ({name}): {len(bank.read(0))} images in {seconds:.1f} s")
    return bank.read(0)
