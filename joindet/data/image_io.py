"""
Reading images robustly, and the one place that decides that an image is skipped (and why).

Every JoinDet component that reads an image file (the training and test mappers, the version-0 prior
sources) calls :func:`read_image`; the image-folder listing calls :func:`probe_image`, its header-only
counterpart. Both raise :class:`UnusableImage` with a ``reason`` from :data:`SKIP_REASONS` for a file
that cannot be used, and :func:`check_image_geometry` is the single rule on sizes. A mapper that
catches ``UnusableImage`` returns None, Detectron2's ``MapDataset`` then maps another image, and
:class:`SkippedImages` counts, logs and (when nothing is usable any more) stops with a clear error.

What :func:`read_image` returns for the inputs one meets in practice:

* EXIF orientation applied, as Detectron2's ``read_image`` does (the same tag and transposition that
  :func:`probe_image` uses for the height/width it reports, so listing and reading agree);
* 8-bit modes (L, P, PA, LA, 1, RGBA, CMYK, YCbCr, ...) converted by PIL to the requested format;
  alpha is dropped (Detectron2's convention);
* 16-bit grayscale (``I;16*``) scaled to 8 bits by 255/65535 (PIL's own conversion clips values above
  255, which would make most 16-bit images white); 32-bit integer (``I``) and float (``F``) images,
  whose range the mode does not say, are stretched from their min to their max;
* 16-bit RGB PNGs are already reduced to 8 bits per channel by PIL when it opens them.

Zero-byte files, files PIL cannot identify, truncated or corrupt data (including a JPEG without its
end-of-image marker, even when ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set), decompression bombs,
missing files and extreme aspect ratios are :class:`UnusableImage`.
"""
import contextlib
import io
import logging
import math
import os
import time
from collections import Counter
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager

__all__ = [
    "SKIP_REASONS",
    "MAX_ASPECT_RATIO",
    "UnusableImage",
    "read_image",
    "probe_image",
    "check_image_geometry",
    "exif_orientation",
    "SkippedImages",
]

logger = logging.getLogger("joindet")

# reason -> what it means (the reason names appear in logs and skip counts)
SKIP_REASONS = {
    "missing": "the file does not exist (e.g. deleted after the dataset was listed)",
    "unreadable": "the file exists but cannot be opened (permissions, a directory, I/O error)",
    "empty_file": "the file has zero bytes",
    "not_an_image": "PIL does not recognise the data as an image",
    "truncated": "the image data ends early",
    "corrupt": "the image data cannot be decoded",
    "too_large": "more pixels than PIL's decompression-bomb limit",
    "unsupported_mode": "PIL cannot convert the image's mode to the requested format",
    "too_small": "a side is shorter than the minimum size",
    "extreme_aspect_ratio": "the longer side exceeds MAX_ASPECT_RATIO times the shorter one",
    "size_mismatch": "the decoded size differs from the dataset's height/width",
}

# Longer side / shorter side above which an image is skipped. At Detectron2's usual resize (shorter side
# 800, longer <= 1333) a 20:1 image keeps 66 px on its shorter side (two stride-32 cells); at LSJ's
# smallest scale (0.1 x 1024) 5 px: beyond that there is nothing left to detect, and the resize rounds
# the shorter side to 0 px sooner or later (which crashes the transform).
MAX_ASPECT_RATIO = 20.0

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE = {  # EXIF orientation -> the PIL transposition that makes the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (5, 6, 7, 8)
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL_BYTES = 4096  # the end-of-image marker may be followed by padding or trailing data
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class UnusableImage(Exception):
    """An image file that cannot be used.

    Attributes:
        file_name: the file.
        reason: a key of :data:`SKIP_REASONS`.
        detail: one line saying what was found (e.g. PIL's error message).
    """

    def __init__(self, file_name, reason: str, detail: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; known: {sorted(SKIP_REASONS)}")
        self.file_name, self.reason, self.detail = str(file_name), reason, detail
        super().__init__(f"{self.file_name}: {reason} ({detail})")


def check_image_geometry(file_name, height: int, width: int, min_size: int = 1,
                         max_aspect_ratio: float = MAX_ASPECT_RATIO) -> None:
    """Raise :class:`UnusableImage` ("too_small", "extreme_aspect_ratio") unless both sides are at
    least ``min_size`` pixels and the longer side is at most ``max_aspect_ratio`` times the shorter."""
    short, long = min(height, width), max(height, width)
    if short < min_size:
        raise UnusableImage(file_name, "too_small", f"{width}x{height} (WxH), a side below {min_size} px")
    if long > max_aspect_ratio * short:
        raise UnusableImage(file_name, "extreme_aspect_ratio",
                            f"{width}x{height} (WxH): aspect ratio {long / short:.1f} > {max_aspect_ratio:g}")


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1 = upright; also for missing or unreadable EXIF,
    as Detectron2 does), without decoding its pixels. A PNG's EXIF chunk is read from ``img.info``
    (``getexif()`` would load the image)."""
    try:
        if img.format == "PNG":
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = img.getexif()
        orientation = int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF: Detectron2's read_image ignores it too
        return 1
    return orientation if orientation in _TRANSPOSE else 1


def _open(file_name, fileobj) -> Image.Image:
    """``Image.open`` with its failures turned into reasons."""
    try:
        return Image.open(fileobj)
    except Image.DecompressionBombError as e:
        raise UnusableImage(file_name, "too_large", str(e)) from e
    except Image.UnidentifiedImageError as e:
        raise UnusableImage(file_name, "not_an_image", "PIL cannot identify the image format") from e
    except MemoryError:
        raise
    except Exception as e:  # PIL raises many types on malformed headers (SyntaxError, struct.error, ...)
        raise UnusableImage(file_name, "corrupt", f"{type(e).__name__}: {e}") from e


@contextlib.contextmanager
def _decoding(file_name):
    """Turn a failure of PIL's decoder inside the block (any exception but MemoryError) into an
    ``UnusableImage``: "truncated" when PIL's message says so, else "corrupt"."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as e:
        reason = "truncated" if "truncat" in str(e).lower() else "corrupt"
        raise UnusableImage(file_name, reason, f"{type(e).__name__}: {e}") from e


def _jpeg_ends_with_eoi(tail: bytes) -> bool:
    return _JPEG_EOI in tail[-_JPEG_TAIL_BYTES:]


def probe_image(file_name, min_size: int = 1, max_aspect_ratio: float = MAX_ASPECT_RATIO) -> Tuple[int, int]:
    """
    (height, width) of a local image file after EXIF orientation, from its header and structure only
    (quick enough to list ImageNet): PIL's ``verify()`` walks the file (catching corrupt and truncated
    PNGs and the like) and a JPEG must end with its end-of-image marker (``verify`` does not decode JPEG
    data). Raises :class:`UnusableImage` for what :func:`read_image` would reject, except pixel data
    that only fails when decoded (rare: a JPEG whose entropy-coded data is damaged mid-file).
    """
    try:
        f = open(file_name, "rb")
    except FileNotFoundError as e:
        raise UnusableImage(file_name, "missing", str(e)) from e
    except OSError as e:
        raise UnusableImage(file_name, "unreadable", f"{type(e).__name__}: {e}") from e
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise UnusableImage(file_name, "empty_file", "0 bytes")
        with _open(file_name, f) as img:
            width, height = img.size
            image_format = img.format
            orientation = exif_orientation(img)
            with _decoding(file_name):
                img.verify()
        if image_format == "JPEG":
            f.seek(max(0, size - _JPEG_TAIL_BYTES))
            if not _jpeg_ends_with_eoi(f.read()):
                raise UnusableImage(file_name, "truncated", "JPEG data has no end-of-image marker")
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    check_image_geometry(file_name, height, width, min_size, max_aspect_ratio)
    return height, width


def _to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit grayscale copy of a 16-bit, 32-bit integer or float image (see the module docstring);
    other images unchanged."""
    if img.mode in _SIXTEEN_BIT_MODES:
        scaled = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
    elif img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        scaled = (np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo) - lo) * scale
    else:
        return img
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), mode="L")


def read_image(file_name, format: Optional[str] = "RGB", expected_size: Optional[Tuple[int, int]] = None,
               max_aspect_ratio: float = MAX_ASPECT_RATIO) -> np.ndarray:
    """
    Read an image file the way Detectron2's ``detection_utils.read_image`` does (PathManager, EXIF
    orientation, ``format`` conversion), robustly (module docstring).

    Args:
        file_name: anything Detectron2's ``PathManager`` opens.
        format: as in Detectron2: "RGB", "BGR", "L", "YUV-BT.601", another PIL mode, or None.
        expected_size: (height, width) the dataset records for the image, or None.
        max_aspect_ratio: see :func:`check_image_geometry`.

    Returns:
        (H, W, C) array, uint8 for "RGB" / "BGR" (C = 3) and "L" (C = 1).

    Raises:
        UnusableImage: the file cannot be used; its ``reason`` says why.
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise UnusableImage(file_name, "missing", str(e)) from e
    except OSError as e:
        raise UnusableImage(file_name, "unreadable", f"{type(e).__name__}: {e}") from e
    if not data:
        raise UnusableImage(file_name, "empty_file", "0 bytes")

    img = _open(file_name, io.BytesIO(data))
    width, height = img.size
    orientation = exif_orientation(img)
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    check_image_geometry(file_name, height, width, max_aspect_ratio=max_aspect_ratio)
    if img.format == "JPEG" and not _jpeg_ends_with_eoi(data):
        raise UnusableImage(file_name, "truncated", "JPEG data has no end-of-image marker")
    with _decoding(file_name):
        img.load()

    if orientation != 1:
        img = img.transpose(_TRANSPOSE[orientation])
    try:
        image = convert_PIL_to_numpy(_to_8bit(img), format)
    except ValueError as e:  # PIL: "conversion from X to Y not supported"
        raise UnusableImage(file_name, "unsupported_mode", f"mode {img.mode}: {e}") from e

    if expected_size is not None and tuple(image.shape[:2]) != tuple(expected_size):
        raise UnusableImage(
            file_name, "size_mismatch",
            f"decoded {image.shape[1]}x{image.shape[0]} (WxH), the dataset says "
            f"{expected_size[1]}x{expected_size[0]}")
    return image


class SkippedImages:
    """
    The images one reader (a mapper, a prior source) skipped in this process, by reason.

    A skipped file is named in a warning the first time it is skipped (up to ``max_named`` files; a bad
    file is met again every epoch), and a summary of the counts so far is logged at the first skip and
    then at most every ``summary_period_s`` seconds (at the next skip; :meth:`log_summary` logs it on
    demand). Detectron2 trains by iteration from an infinite sampler, with each data-loader worker its
    own process, so there is no epoch end to report at: each process reports its own counts, as
    Detectron2's ``log_every_n_seconds`` does for progress.

    ``max_consecutive`` consecutive skips (or ``dataset_size`` when it is smaller: after that many
    Detectron2's ``MapDataset`` has no image left to fall back on) raise a ``RuntimeError`` that names
    ``what`` (the dataset or folder): every image is bad, or the storage went away.
    """

    def __init__(self, what: str, *, max_consecutive: Optional[int] = 100, dataset_size: Optional[int] = None,
                 summary_period_s: float = 300.0, max_named: int = 20):
        self.what = what
        self.max_consecutive = max_consecutive
        self.dataset_size = dataset_size
        self.summary_period_s = summary_period_s
        self.max_named = max_named
        self.counts: Counter = Counter()
        self.used = 0
        self.consecutive = 0
        self._named = set()
        self._last_summary: Optional[float] = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        by_reason = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts.items()))
        return (f"{self.what}: {self.total} image reads skipped in this process"
                f"{f' ({by_reason})' if by_reason else ''}, {self.used} used")

    def log_summary(self) -> None:
        """Log the counts (a warning if anything was skipped, else at info level)."""
        logger.log(logging.WARNING if self.total else logging.INFO, self.summary())
        self._last_summary = time.monotonic()

    def used_one(self) -> None:
        """Record an image that was read and used."""
        self.used += 1
        self.consecutive = 0

    def limit(self) -> float:
        """The number of consecutive skips that means nothing usable is left."""
        limits = [n for n in (self.max_consecutive, self.dataset_size) if n]
        return min(limits) if limits else math.inf

    def skip(self, error: UnusableImage) -> None:
        """Record a skipped image; raise ``RuntimeError`` when :meth:`limit` consecutive images were skipped."""
        self.counts[error.reason] += 1
        self.consecutive += 1
        if error.file_name not in self._named and len(self._named) < self.max_named:
            self._named.add(error.file_name)
            logger.warning("%s: skipping %s: %s (%s)%s", self.what, error.file_name, error.reason, error.detail,
                           "; further skipped files are counted, not named"
                           if len(self._named) == self.max_named else "")
        if self.consecutive >= self.limit():
            raise RuntimeError(
                f"{self.what}: {self.consecutive} consecutive images could not be used "
                f"({', '.join(f'{r}: {n}' for r, n in sorted(self.counts.items()))}; the last: "
                f"{error.file_name}: {error.reason}, {error.detail}). Every image of the dataset may be "
                "unusable, or its storage went away: check the files and the dataset's image root.")
        now = time.monotonic()
        if self._last_summary is None or now - self._last_summary >= self.summary_period_s:
            self.log_summary()
