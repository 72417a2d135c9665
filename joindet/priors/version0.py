"""Version 0 of a prior bank, computed once per (dataset, source, settings, image set) and reused afterwards.

``load_or_compute_version0`` is what ``PriorRefreshHook`` calls before training; ``version0_cache_key`` is
the key a bank's version 0 is stored under (``meta.json``: ``info.source_key``). A bank folder that holds
version 0 of other settings is an error, never silently overwritten.
"""
import hashlib
import json
import logging
import numbers
import time
from typing import Any, Dict, Sequence

import numpy as np

from .bank import PriorBank, PriorVersion
from .generation import priors_to_arrays, publish_version, shard
from .sources import _check_dataset_dicts, prior_source_name

__all__ = ["version0_cache_key", "load_or_compute_version0"]

logger = logging.getLogger("joindet")


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
