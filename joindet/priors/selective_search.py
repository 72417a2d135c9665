"""
Selective search boxes: the version-0 object priors of the DETReg baseline.

DETReg (Bar et al., 2022) runs OpenCV's selective search (``cv2.ximgproc``, "fast" mode) on a
small copy of each image and keeps the first proposals in OpenCV's order as pseudo boxes. Its
``selective_search(img, h, w, res_size=128)`` resizes the image to a 128x128 square (aspect ratio
not kept) before the search; its published caching script passes ``res_size=None`` (full
resolution). What we do (``selective_search_boxes``):

* resize so that the shorter side is ``min_side`` (128 by default), keeping the aspect ratio, and
  only ever downscale (``min_side=None`` runs at full resolution). Searching a small image is what
  makes selective search affordable on a large dataset (``python -m
  joindet.tools.bench_selective_search`` times both settings);
* feed OpenCV the image in BGR order: its colour-space conversions (HSV, Lab) assume BGR. DETReg
  passes PIL's RGB array, which permutes those channels; the boxes differ slightly, not in kind;
* keep the first ``topk`` non-degenerate rectangles in OpenCV's output order, scale them back to
  the original image, convert to XYXY, clip. OpenCV ranks the regions by hierarchy level times a
  random factor drawn with the C library's ``rand()`` (one process-wide state, never seeded by
  OpenCV), so the order, and hence the top ``topk``, changes from call to call (DETReg's cached
  boxes are one such draw). We call the C library's ``srand(seed)`` right before the search, under
  a module lock because the search releases the GIL (threads of one process therefore search one
  at a time; use processes for parallelism). The result is then deterministic for a fixed image
  and seed, whatever the process, thread count or call order;
* score them by rank, ``1 - rank / topk`` (selective search has no score of its own), so scores
  strictly decrease from 1.0.

``boxes_for_image_file`` reads an image with ``joindet.data.image_io.read_image`` (what the data
loader uses: EXIF orientation applied, 16-bit scaled to 8 bits), and reports an unusable image (with
its skip reason) instead of raising, so that one bad file does not stop a pass over a whole dataset.
"""
import ctypes
import functools
import logging
import multiprocessing
import numbers
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.config import configurable

from ..utils.progress import format_seconds, log_progress
from . import defaults as D
from .sources import PriorList, _check_dataset_dicts, register_prior_source

__all__ = ["SELECTIVE_SEARCH_MODES", "selective_search_boxes", "boxes_for_image_file", "SelectiveSearchSource"]

logger = logging.getLogger("joindet")

SELECTIVE_SEARCH_MODES = ("fast", "quality")

_RAND_LOCK = threading.Lock()
_LIBC = []  # [the C library, or None where it cannot be found], filled on first use


def _c_library():
    """The C runtime whose ``rand()`` OpenCV calls, or None where it cannot be loaded."""
    if not _LIBC:
        names = ["ucrtbase", "msvcrt"] if sys.platform.startswith("win") else [None]
        lib = None
        for name in names:
            try:
                lib = ctypes.CDLL(name)
                lib.srand.argtypes = [ctypes.c_uint]
                lib.srand.restype = None
                break
            except (OSError, AttributeError):
                lib = None
        if lib is None:
            logging.getLogger("joindet").warning(
                "cannot load the C library to seed rand(): selective search boxes will not be "
                "reproducible from call to call"
            )
        _LIBC.append(lib)
    return _LIBC[0]


def _check_positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_settings(topk, min_side, mode, num_threads):
    topk = _check_positive_int("topk", topk)
    if min_side is not None:
        min_side = _check_positive_int("min_side", min_side)
    if mode not in SELECTIVE_SEARCH_MODES:
        raise ValueError(f"mode must be one of {SELECTIVE_SEARCH_MODES}, got {mode!r}")
    num_threads = _check_positive_int("num_threads", num_threads)
    return topk, min_side, mode, num_threads


def _empty() -> Tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def selective_search_boxes(
    image: np.ndarray,
    topk: int = 30,
    min_side: Optional[int] = 128,
    mode: str = "fast",
    num_threads: int = 1,
    seed: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """
    Selective search proposals of one image (see the module docstring for the recipe).

    Args:
        image: uint8 (H, W, 3) RGB.
        topk: the number of proposals to keep (the first ones in OpenCV's order).
        min_side: downscale so that the shorter side is ``min_side`` before the search (an image
            whose shorter side is already <= ``min_side`` is used as is); None: full resolution.
        mode: "fast" (``switchToSelectiveSearchFast``, DETReg's choice) or "quality"
            (``switchToSelectiveSearchQuality``).
        num_threads: OpenCV threads for the search; the previous setting is restored afterwards.
        seed: the value passed to the C library's ``srand`` before the search (it fixes the
            random part of OpenCV's ranking; the C library's ``rand`` state is left changed).

    Returns:
        boxes: float32 (k, 4) XYXY in the pixel coordinates of ``image``, within [0, W] x [0, H],
            with x2 > x1 and y2 > y1, k <= topk.
        scores: float32 (k,), ``1 - rank / topk``, strictly decreasing.
    """
    topk, min_side, mode, num_threads = _check_settings(topk, min_side, mode, num_threads)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = image.shape if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image must be a (H, W, 3) RGB numpy array, got {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"image must not be empty, got shape {image.shape}")

    bgr = np.ascontiguousarray(image[:, :, ::-1])
    short = min(height, width)
    if min_side is not None and short > min_side:
        scale = min_side / short
        new_w = max(1, int(round(width * scale)))
        new_h = max(1, int(round(height * scale)))
        bgr = cv2.resize(bgr, (new_w, new_h), interpolation=cv2.INTER_AREA)
    search_h, search_w = bgr.shape[:2]

    libc = _c_library()
    with _RAND_LOCK:
        previous_threads = cv2.getNumThreads()
        cv2.setNumThreads(num_threads)
        try:
            ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
            ss.setBaseImage(bgr)
            if mode == "fast":
                ss.switchToSelectiveSearchFast()
            else:
                ss.switchToSelectiveSearchQuality()
            if libc is not None:
                libc.srand(int(seed))
            rects = ss.process()  # int32 (n, 4) x, y, w, h in the searched image
        finally:
            cv2.setNumThreads(previous_threads)
    if rects is None or len(rects) == 0:
        return _empty()

    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    sx, sy = width / search_w, height / search_h
    boxes = np.stack(
        [
            rects[:, 0] * sx,
            rects[:, 1] * sy,
            (rects[:, 0] + rects[:, 2]) * sx,
            (rects[:, 1] + rects[:, 3]) * sy,
        ],
        axis=1,
    )
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, height)
    boxes = boxes.astype(np.float32)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes = boxes[keep][:topk]
    scores = (1.0 - np.arange(boxes.shape[0], dtype=np.float64) / topk).astype(np.float32)
    return np.ascontiguousarray(boxes), scores


def boxes_for_image_file(
    file_name: str,
    height: Optional[int] = None,
    width: Optional[int] = None,
    topk: int = 30,
    min_side: Optional[int] = 128,
    mode: str = "fast",
    num_threads: int = 1,
) -> Tuple[np.ndarray, np.ndarray, Optional[str]]:
    """
    Read one image file and run ``selective_search_boxes`` on it.

    Args:
        file_name: the image path (anything Detectron2's ``PathManager`` opens).
        height, width: the size the dataset records for the image, or None; a read image of
            another size is reported as a problem (Detectron2's mapper would reject it too).
        topk, min_side, mode, num_threads: as in ``selective_search_boxes``.

    Returns:
        (boxes float32 (k, 4), scores float32 (k,), problem): ``problem`` is None on success, else
        ``"skipped (<reason>): <detail>"`` with a reason of ``image_io.SKIP_REASONS`` (missing, corrupt,
        size mismatch, ...), and the arrays are empty.
    """
    from joindet.data.image_io import UnusableImage, read_image

    _check_settings(topk, min_side, mode, num_threads)
    expected = (height, width) if height is not None and width is not None else None
    try:
        image = read_image(file_name, format="RGB", expected_size=expected)
    except UnusableImage as e:
        return (*_empty(), f"skipped ({e.reason}): {e.detail}")
    boxes, scores = selective_search_boxes(image, topk, min_side, mode, num_threads)
    return boxes, scores, None


# --------------------------------------------------------------------------- the version-0 source
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

    @configurable
    def __init__(self, topk: int = D.TOPK, min_side: Optional[int] = D.SELECTIVE_SEARCH_MIN_SIDE,
                 num_workers: int = D.SELECTIVE_SEARCH_NUM_WORKERS, mode: str = "fast",
                 start_method: Optional[str] = None):
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
