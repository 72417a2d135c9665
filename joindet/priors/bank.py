"""
The prior bank: all object priors of a dataset, per version, as memory-mappable numpy arrays.

Layout of one version (no Python object per box; COCO is ~3.5M boxes, ImageNet ~38M)::

    root/v0003/boxes.npy      float32 (N, 4)  XYXY absolute coordinates
    root/v0003/scores.npy     float32 (N,)
    root/v0003/offsets.npy    int64 (num_images + 1,)  image i's priors are rows offsets[i]:offsets[i+1]
    root/v0003/image_ids.npy  int64 (num_images,)      sorted ascending, unique
    root/v0003/meta.json      version, num_images, num_boxes, created, info, filtered_priors

Degenerate supervision never enters the bank: at the write, a prior with a non-finite coordinate, a
non-finite score, or zero or negative width or height (x2 <= x1 or y2 <= y1) is dropped, and the
numbers dropped (by those three reasons, each prior counted under the first that applies) are logged
and stored as ``filtered_priors`` in meta.json. An image may so lose all its priors; it stays in the
version with none. Structural problems (shapes, lengths, offsets, ids) still raise.

A version is written into a temporary directory inside ``root`` and renamed into place at the
end, so a reader never sees a half-written version and an interrupted write leaves the earlier
versions untouched. A version counts only once its directory holds ``meta.json``.
"""

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..utils.atomic import fsync_dir
from ..utils.process import pid_alive

__all__ = ["PriorBank", "PriorVersion", "FILTER_REASONS", "check_priors", "supervising_index", "usable_priors"]

logger = logging.getLogger("joindet")

_VERSION_DIR = re.compile(r"^v(\d{4,})$")
# folders of writes in progress (or interrupted): .tmp-v0003-<pid>-<random>, .old-v0003-<pid>-<random>, and the
# staging folders of multi-process writes, .tmp-v0003-<pid of the main process>-shards-<random>
_WRITER_DIR = re.compile(r"^\.(?P<kind>tmp|old)-(?P<name>v\d{4,})-(?P<pid>\d+)-")
_ARRAY_FILES = ("image_ids", "offsets", "boxes", "scores")
_META_FILE = "meta.json"
FILTER_REASONS = ("non_finite_box", "non_finite_score", "empty_or_inverted_box")  # keys of meta["filtered_priors"]


def _version_dirname(version: int) -> str:
    return f"v{version:04d}"


def _check_version(version) -> int:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise ValueError(f"version must be an integer, got {version!r}")
    if version < 0:
        raise ValueError(f"version must be >= 0, got {version}")
    return int(version)


def supervising_index(scores, train_topk: int) -> np.ndarray:
    """
    Which of an image's priors supervise the detector (``JOINDET.PRIORS.TRAIN_TOPK``): with ``train_topk`` > 0
    and more priors than that, the positions of its ``train_topk`` highest-scored ones (ties: the earlier
    first); otherwise all of them, in bank order. int64 positions into the image's bank entry.
    """
    scores = np.asarray(scores)
    if 0 < int(train_topk) < scores.shape[0]:
        return np.argsort(-scores, kind="stable")[: int(train_topk)].astype(np.int64)
    return np.arange(scores.shape[0], dtype=np.int64)


class PriorVersion:
    """
    One version of the prior bank, opened lazily.

    Picklable for data-loader workers: only the directory, the version and the ``mmap`` flag are
    pickled; each process opens its own memory maps on first access.

    Attributes:
        version (int): the version number.
        path (Path): the version's directory.
    """

    def __init__(self, path: Union[str, os.PathLike], version: int, mmap: bool = True):
        self.path = Path(path)
        self.version = int(version)
        self.mmap = bool(mmap)
        self._arrays: Optional[Dict[str, np.ndarray]] = None
        self._meta: Optional[dict] = None

    # -- lazy loading / pickling -------------------------------------------------------------
    def _load(self) -> Dict[str, np.ndarray]:
        if self._arrays is None:
            mode = "r" if self.mmap else None
            arrays = {}
            for name in _ARRAY_FILES:
                path = self.path / f"{name}.npy"
                try:  # allow_pickle=False: a file that holds Python objects is refused, never unpickled
                    arrays[name] = np.load(path, mmap_mode=mode, allow_pickle=False)
                except ValueError as e:
                    raise ValueError(f"prior bank file {path} is not a plain numpy array file: {e}") from e
            self._arrays = arrays
        return self._arrays

    def __getstate__(self):
        return {"path": str(self.path), "version": self.version, "mmap": self.mmap}

    def __setstate__(self, state):
        self.__init__(state["path"], state["version"], state["mmap"])

    def __repr__(self) -> str:
        return f"PriorVersion(path={str(self.path)!r}, version={self.version}, mmap={self.mmap})"

    # -- arrays -------------------------------------------------------------------------------
    @property
    def image_ids(self) -> np.ndarray:
        """int64 (num_images,), sorted ascending."""
        return self._load()["image_ids"]

    @property
    def offsets(self) -> np.ndarray:
        """int64 (num_images + 1,): image i's priors are rows offsets[i]:offsets[i+1]."""
        return self._load()["offsets"]

    @property
    def boxes(self) -> np.ndarray:
        """float32 (N, 4) XYXY absolute, all images concatenated (a read-only memmap if mmap)."""
        return self._load()["boxes"]

    @property
    def scores(self) -> np.ndarray:
        """float32 (N,), aligned with ``boxes``."""
        return self._load()["scores"]

    @property
    def meta(self) -> dict:
        """The contents of meta.json (version, num_images, num_boxes, created, info, filtered_priors)."""
        if self._meta is None:
            path = self.path / _META_FILE
            try:
                with open(path, "r", encoding="utf-8") as f:
                    self._meta = json.load(f)
            except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
                raise ValueError(f"prior bank file {path} is not valid JSON: {e}") from e
        return self._meta

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])

    def _index(self, image_id) -> int:
        ids = self.image_ids
        idx = int(np.searchsorted(ids, image_id))
        if idx >= ids.shape[0] or ids[idx] != image_id:
            span = f"ids {int(ids[0])}..{int(ids[-1])}" if ids.shape[0] else "no images"
            raise KeyError(
                f"image id {image_id!r} is not in prior bank version {self.version} at "
                f"{self.path} ({ids.shape[0]} images, {span})"
            )
        return idx

    def __contains__(self, image_id) -> bool:
        try:
            self._index(image_id)
        except KeyError:
            return False
        return True

    def get(self, image_id: int) -> Tuple[np.ndarray, np.ndarray]:
        """
        The priors of one image.

        Returns:
            boxes float32 (k, 4) XYXY absolute and scores float32 (k,) (k may be 0), as writable
            copies (not views of the memory map).

        Raises:
            KeyError: the image id is not in this version.
        """
        idx = self._index(image_id)
        offsets = self.offsets
        start, end = int(offsets[idx]), int(offsets[idx + 1])
        return np.array(self.boxes[start:end]), np.array(self.scores[start:end])

    def boxes_per_image(self) -> np.ndarray:
        """int64 (num_images,): the number of priors of each image, in ``image_ids`` order."""
        return np.diff(np.asarray(self.offsets))

    def mean_score(self) -> float:
        """The mean score over all priors of this version (0.0 when there are none)."""
        scores = self.scores
        if scores.shape[0] == 0:
            return 0.0
        return float(np.mean(scores, dtype=np.float64))


class PriorBank:
    """
    All versions of the object priors of one dataset, stored under ``root`` (see module docstring).

    Args:
        root: the bank's directory; created on the first write.
    """

    def __init__(self, root: Union[str, os.PathLike]):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"PriorBank(root={str(self.root)!r})"

    # -- listing ------------------------------------------------------------------------------
    def versions(self) -> List[int]:
        """The complete versions (directory ``v{version:04d}`` holding meta.json), ascending."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in os.scandir(self.root):
            m = _VERSION_DIR.match(entry.name)
            if m is None or not entry.is_dir():
                continue
            version = int(m.group(1))
            if entry.name != _version_dirname(version):
                continue  # e.g. "v00003": not a name this bank writes
            if os.path.isfile(os.path.join(entry.path, _META_FILE)):
                found.append(version)
        return sorted(found)

    def latest_version(self) -> Optional[int]:
        """The highest complete version, or None for an empty bank."""
        versions = self.versions()
        return versions[-1] if versions else None

    def version_path(self, version: int) -> Path:
        return self.root / _version_dirname(_check_version(version))

    # -- reading ------------------------------------------------------------------------------
    def read(self, version: int, mmap: bool = True) -> PriorVersion:
        """
        Open one version.

        Args:
            version: the version number.
            mmap: memory-map the arrays (``np.load(..., mmap_mode="r")``); otherwise load them.

        Raises:
            FileNotFoundError: the version is not (completely) present in this bank.
        """
        version = _check_version(version)
        path = self.root / _version_dirname(version)
        if not (path / _META_FILE).is_file():
            raise FileNotFoundError(
                f"prior bank version {version} not found in {self.root} "
                f"(versions present: {self.versions()})"
            )
        return PriorVersion(path, version, mmap=mmap)

    # -- writing ------------------------------------------------------------------------------
    def write_version(
        self,
        version: int,
        image_ids: Sequence[int],
        boxes_list: Iterable,
        scores_list: Iterable,
        info: Optional[dict] = None,
        overwrite: bool = False,
    ) -> PriorVersion:
        """
        Write a version from per-image arrays (priors with non-finite values or no area are dropped:
        see the module docstring).

        Args:
            version: the version number (>= 0).
            image_ids: num_images unique integer image ids, in any order.
            boxes_list: num_images arrays, each float (k_i, 4) XYXY absolute (k_i may be 0).
            scores_list: num_images arrays, each (k_i,).
            info: free-form JSON-serialisable dict stored in meta.json.
            overwrite: replace an existing version (atomically) instead of refusing.

        Returns:
            The written version, opened with ``mmap=True``.
        """
        version = _check_version(version)
        self._refuse_existing(version, overwrite)
        ids = np.asarray(image_ids)
        if ids.ndim != 1:
            raise ValueError(f"image_ids must be one-dimensional, got shape {ids.shape}")
        boxes_list, scores_list = list(boxes_list), list(scores_list)
        if not (len(ids) == len(boxes_list) == len(scores_list)):
            raise ValueError(
                f"image_ids, boxes_list and scores_list must have the same length, got "
                f"{len(ids)}, {len(boxes_list)}, {len(scores_list)}"
            )
        boxes_arrays, scores_arrays = [], []
        for i, (b, s) in enumerate(zip(boxes_list, scores_list)):
            b, s = check_priors(np.asarray(b, dtype=np.float32), np.asarray(s, dtype=np.float32), f"image {ids[i]}")
            boxes_arrays.append(b)
            scores_arrays.append(s)
        counts = np.array([b.shape[0] for b in boxes_arrays], dtype=np.int64)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        boxes = np.concatenate(boxes_arrays) if boxes_arrays else np.zeros((0, 4), np.float32)
        scores = np.concatenate(scores_arrays) if scores_arrays else np.zeros((0,), np.float32)
        return self.write_version_arrays(
            version, ids, boxes, scores, offsets, info=info, overwrite=overwrite
        )

    def write_version_arrays(
        self,
        version: int,
        image_ids: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        offsets: np.ndarray,
        info: Optional[dict] = None,
        overwrite: bool = False,
    ) -> PriorVersion:
        """
        Write a version from concatenated arrays (priors with non-finite values or no area are dropped:
        see the module docstring).

        Args:
            version: the version number (>= 0).
            image_ids: int (num_images,) unique image ids, in any order (sorted before writing).
            boxes: float (N, 4) XYXY absolute, image i's rows at offsets[i]:offsets[i+1].
            scores: float (N,).
            offsets: int (num_images + 1,), non-decreasing, offsets[0] = 0, offsets[-1] = N.
            info: free-form JSON-serialisable dict stored in meta.json.
            overwrite: replace an existing version (atomically) instead of refusing.

        Returns:
            The written version, opened with ``mmap=True``.
        """
        version = _check_version(version)
        self._refuse_existing(version, overwrite)
        ids, boxes, scores, offsets = _validate_arrays(image_ids, boxes, scores, offsets)
        boxes, scores, offsets, filtered = _drop_degenerate_priors(boxes, scores, offsets)
        if any(filtered.values()):
            dropped = sum(filtered.values())
            logger.warning(
                f"prior bank {self.root} version {version}: dropped {dropped} of {boxes.shape[0] + dropped} "
                f"priors ({', '.join(f'{k}: {n}' for k, n in filtered.items())})")
        ids, boxes, scores, offsets = _sort_by_image_id(ids, boxes, scores, offsets)
        meta = {
            "version": version,
            "num_images": int(ids.shape[0]),
            "num_boxes": int(boxes.shape[0]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "created_unix": time.time(),
            "info": dict(info) if info is not None else {},
            "filtered_priors": filtered,
        }
        try:
            meta_text = json.dumps(meta, indent=2, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"info must be a JSON-serialisable dict: {e}") from e

        self.root.mkdir(parents=True, exist_ok=True)
        name = _version_dirname(version)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{os.getpid()}-", dir=self.root))
        try:
            arrays = {"image_ids": ids, "offsets": offsets, "boxes": boxes, "scores": scores}
            for key in _ARRAY_FILES:
                with open(tmp / f"{key}.npy", "wb") as f:
                    np.save(f, arrays[key], allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
            with open(tmp / _META_FILE, "w") as f:
                f.write(meta_text)
                f.flush()
                os.fsync(f.fileno())
            self._move_into_place(tmp, name, overwrite)
        except OSError as e:  # e.g. a full disk (ENOSPC): say which version; the earlier ones are intact
            shutil.rmtree(tmp, ignore_errors=True)
            raise OSError(e.errno, f"cannot write prior bank version {version} at {self.root / name}: {e} "
                                   f"(the bank's other versions are unchanged)") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.read(version)

    def make_staging_dir(self, version: int) -> Path:
        """A new, empty folder inside the bank root where the processes of a run write their shards of
        ``version`` before the main process commits it (``joindet.priors.generation.publish_version``).
        It is named ``.tmp-vNNNN-<pid>-shards-*`` after this (the main) process, so that :meth:`recover`
        removes it once that process is gone; it is never taken for a version."""
        name = _version_dirname(_check_version(version))
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".tmp-{name}-{os.getpid()}-shards-", dir=self.root))

    def _refuse_existing(self, version: int, overwrite: bool) -> None:
        path = self.root / _version_dirname(version)
        if not overwrite and os.path.lexists(path):
            raise ValueError(
                f"prior bank version {version} already exists at {path}; "
                "pass overwrite=True to replace it"
            )

    def _move_into_place(self, tmp: Path, name: str, overwrite: bool) -> None:
        target = self.root / name
        old = None
        if os.path.lexists(target):
            if not overwrite:
                raise ValueError(
                    f"prior bank version directory {target} appeared while writing; "
                    "pass overwrite=True to replace it"
                )
            old = Path(tempfile.mkdtemp(prefix=f".old-{name}-{os.getpid()}-", dir=self.root))
            os.replace(target, old / name)  # move the old version aside (same filesystem)
        try:
            os.rename(tmp, target)
        except BaseException:
            if old is not None and not os.path.lexists(target):
                os.replace(old / name, target)  # put the old version back
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(self.root)

    def recover(self) -> List[str]:
        """
        Tidy up after writers that were killed (SIGKILL, power loss) mid-write; call it before a run
        writes to the bank (only one process at a time writes a bank).

        - a version that was being replaced and had been moved aside (``.old-vNNNN-<pid>-*``) while its
          replacement had not yet been renamed into place is put back;
        - the temporary folders of writes that never finished (``.tmp-vNNNN-<pid>-*``, the shard staging
          folders of multi-process writes ``.tmp-vNNNN-<pid>-shards-*`` among them, and what is left of
          moved-aside versions) are removed.
        Folders of a writer process that is still alive are left alone. Returns what was done, one line each.
        """
        done = []
        if not self.root.is_dir():
            return done
        for entry in sorted(self.root.iterdir()):
            match = _WRITER_DIR.match(entry.name)
            if not match or not entry.is_dir() or _process_alive(int(match.group("pid"))):
                continue
            name = match.group("name")
            if match.group("kind") == "old" and (entry / name).is_dir() and not os.path.lexists(self.root / name):
                os.replace(entry / name, self.root / name)
                done.append(f"restored {name} from the interrupted replacement {entry.name}")
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {entry.name} (an interrupted write)")
        if done:
            fsync_dir(self.root)
        return done


def _process_alive(pid: int) -> bool:
    return pid != os.getpid() and pid_alive(pid)  # this process is not writing while it recovers


def _validate_arrays(image_ids, boxes, scores, offsets):
    ids = np.asarray(image_ids)
    if ids.ndim != 1:
        raise ValueError(f"image_ids must be one-dimensional, got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        if ids.dtype.kind != "f" or not np.all(np.mod(ids, 1) == 0):
            raise ValueError(f"image_ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if np.unique(ids).shape[0] != ids.shape[0]:
        uniq, counts = np.unique(ids, return_counts=True)
        raise ValueError(f"duplicate image ids: {uniq[counts > 1][:10].tolist()}")

    boxes, scores = check_priors(np.asarray(boxes, dtype=np.float32), np.asarray(scores, dtype=np.float32),
                                 "the version (all images)")

    offsets = np.asarray(offsets)
    if offsets.ndim != 1 or offsets.shape[0] != ids.shape[0] + 1:
        raise ValueError(
            f"offsets must have shape (num_images + 1,) = ({ids.shape[0] + 1},), got {offsets.shape}"
        )
    if not np.issubdtype(offsets.dtype, np.integer):
        raise ValueError(f"offsets must be integers, got dtype {offsets.dtype}")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != boxes.shape[0]:
        raise ValueError(
            f"offsets must start at 0 and end at the number of boxes {boxes.shape[0]}, "
            f"got {int(offsets[0])} and {int(offsets[-1])}"
        )
    if np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must be non-decreasing")
    return ids, boxes, scores, offsets


def check_priors(boxes, scores, what: str, *, valid: bool = False):
    """Check one set of priors and return it, an empty array of any shape reshaped to (0, 4) / (0,).

    Args:
        boxes: (k, 4) XYXY, scores: (k,): numpy arrays or torch tensors (any device), already of the
            caller's dtype.
        what: names the set in the errors ("image 7", "new priors").
        valid: also refuse non-finite values and boxes with x2 < x1 or y2 < y1 (zero area passes: the
            bank's filter, :func:`usable_priors`, drops such priors at the write).

    Raises:
        ValueError: the shapes (or, with ``valid``, the values) are not those of a set of priors.
    """
    if math.prod(boxes.shape) == 0:
        boxes = boxes.reshape(0, 4)
    if math.prod(scores.shape) == 0:
        scores = scores.reshape(0)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes of {what} must have shape (k, 4), got {tuple(boxes.shape)}")
    k = boxes.shape[0]
    if scores.ndim != 1:
        raise ValueError(f"scores of {what} must have shape ({k},), got {tuple(scores.shape)}")
    if scores.shape[0] != k:
        raise ValueError(f"scores of {what} must have shape ({k},), got {tuple(scores.shape)}: boxes and scores "
                         f"disagree on the number of priors")
    if valid:
        if not (bool(_isfinite(boxes).all()) and bool(_isfinite(scores).all())):
            raise ValueError(f"priors of {what} contain NaN or infinite values")
        if bool((boxes[:, 2:] < boxes[:, :2]).any()):
            raise ValueError(f"boxes of {what} must be XYXY with x2 >= x1 and y2 >= y1: one has x2 < x1 or y2 < y1")
    return boxes, scores


def _isfinite(x):
    return x.isfinite() if hasattr(x, "isfinite") else np.isfinite(x)  # a torch tensor, else numpy


def usable_priors(boxes: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, Dict[str, int]]:
    """Which priors may enter the bank: finite coordinates, a finite score, x2 > x1 and y2 > y1.

    Args:
        boxes: float (N, 4) XYXY; scores: float (N,).

    Returns:
        keep: bool (N,); counts: ``{reason: number of rows dropped}`` over ``FILTER_REASONS``, each row
        counted under the first reason that applies.
    """
    finite_box = np.isfinite(boxes).all(axis=1)
    finite_score = np.isfinite(scores)
    with np.errstate(invalid="ignore"):  # comparisons with NaN are False, as wanted
        has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    counts = {
        "non_finite_box": int((~finite_box).sum()),
        "non_finite_score": int((finite_box & ~finite_score).sum()),
        "empty_or_inverted_box": int((finite_box & finite_score & ~has_area).sum()),
    }
    return finite_box & finite_score & has_area, counts


def _drop_degenerate_priors(boxes, scores, offsets):
    """The rows that :func:`usable_priors` keeps, with the offsets recomputed (vectorised). Returns
    (boxes, scores, offsets, counts of the dropped rows by reason)."""
    keep, counts = usable_priors(boxes, scores)
    if keep.all():
        return boxes, scores, offsets, counts
    image_of_row = np.repeat(np.arange(offsets.shape[0] - 1), np.diff(offsets))
    kept_per_image = np.bincount(image_of_row[keep], minlength=offsets.shape[0] - 1)
    new_offsets = np.zeros_like(offsets)
    np.cumsum(kept_per_image, out=new_offsets[1:])
    return np.ascontiguousarray(boxes[keep]), np.ascontiguousarray(scores[keep]), new_offsets, counts


def _sort_by_image_id(ids, boxes, scores, offsets):
    """Reorder images (and their rows) so that ids ascend; vectorised, no loop over images."""
    if ids.shape[0] == 0 or np.all(ids[1:] > ids[:-1]):
        return ids, boxes, scores, offsets
    order = np.argsort(ids, kind="stable")
    counts = np.diff(offsets)[order]
    starts = offsets[:-1][order]
    new_offsets = np.zeros_like(offsets)
    np.cumsum(counts, out=new_offsets[1:])
    # row r of image j (sorted) comes from starts[j] + (r - new_offsets[j])
    rows = np.repeat(starts - new_offsets[:-1], counts) + np.arange(boxes.shape[0], dtype=np.int64)
    return ids[order], boxes[rows], scores[rows], new_offsets
