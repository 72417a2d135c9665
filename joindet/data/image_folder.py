"""
A folder of unlabelled images as a pretraining set (e.g. ImageNet's train folder, or the user's
own photos): every image file under the folder, recursively, becomes one Detectron2 dataset dict
``{"file_name", "height", "width", "image_id"}``.

Only headers are read, so listing a large folder is quick: ``joindet.data.image_io.probe_image``
gives the size after EXIF orientation (as the mappers' ``read_image`` returns the image), walks the
file's structure (catching corrupt and truncated PNGs and the like) and requires a JPEG to end with
its end-of-image marker. Unusable files (with the reasons of ``image_io.SKIP_REASONS``), images
smaller than ``min_size`` and images of an extreme aspect ratio are skipped with one warning that
counts them by reason. Grayscale, palette, RGBA, CMYK and 16-bit images are kept: ``read_image``
converts them to 3 channels of 8 bits. A file that becomes unusable after the listing (deleted,
overwritten) is skipped by the mapper that reads it.
"""
import functools
import logging
import os
from collections import Counter
from typing import List, Sequence, Tuple

from .image_io import UnusableImage, probe_image

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "register_image_folder"]

logger = logging.getLogger("joindet")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_SHOWN_SKIPPED = 5  # skipped file names named in the warning


def _check_extensions(extensions) -> Tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = []
    for ext in extensions:
        if not isinstance(ext, str) or not ext.strip("."):
            raise ValueError(f"extensions must be non-empty strings such as '.jpg', got {ext!r}")
        ext = ext.lower()
        out.append(ext if ext.startswith(".") else "." + ext)
    if not out:
        raise ValueError("extensions must not be empty")
    return tuple(out)


def _check_min_size(min_size) -> int:
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
    return min_size


def _check_folder(folder) -> str:
    if folder is None or (isinstance(folder, str) and not folder):
        raise ValueError(f"folder must be a directory path, got {folder!r}")
    folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    if not os.path.exists(folder):
        raise FileNotFoundError(f"image folder {folder} does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"image folder {folder} is not a directory")
    return folder


def _list_images(folder: str, extensions: Tuple[str, ...]) -> Tuple[List[str], int]:
    """Relative POSIX paths of the image files under ``folder`` (sorted) and the count of other files."""
    found, others = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(extensions):
                rel = os.path.relpath(os.path.join(dirpath, name), folder)
                found.append(rel.replace(os.sep, "/"))
            else:
                others += 1
    return sorted(found), others


def load_image_folder(
    folder, min_size: int = 32, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> List[dict]:
    """
    Dataset dicts for every usable image under ``folder`` (recursive).

    Args:
        folder: the directory.
        min_size: images with a side shorter than this (pixels) are skipped.
        extensions: file name endings (case-insensitive) that count as images.

    Returns:
        list of ``{"file_name": absolute path, "height": int, "width": int, "image_id": int}``,
        sorted by path relative to ``folder``; ``image_id`` is the index in that order (stable as
        long as the folder's usable images do not change).

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: it is not a directory, or holds no usable image.
    """
    folder = _check_folder(folder)
    min_size = _check_min_size(min_size)
    extensions = _check_extensions(extensions)
    paths, others = _list_images(folder, extensions)

    dicts, skipped = [], []
    for rel in paths:
        path = os.path.join(folder, rel)
        try:
            height, width = probe_image(path, min_size=min_size)
        except UnusableImage as e:
            skipped.append((rel, e))
            continue
        dicts.append({"file_name": path, "height": height, "width": width, "image_id": len(dicts)})

    reasons = Counter(e.reason for _, e in skipped)
    small, aspect = reasons.pop("too_small", 0), reasons.pop("extreme_aspect_ratio", 0)
    corrupt = sum(reasons.values())
    by_reason = f" ({', '.join(f'{r}: {n}' for r, n in sorted(reasons.items()))})" if corrupt else ""
    counts = (
        f"{len(paths)} image files ({', '.join(extensions)}), {others} other files; "
        f"{corrupt} corrupt{by_reason}, {small} smaller than {min_size} px, "
        f"{aspect} of an extreme aspect ratio, {len(dicts)} kept"
    )
    shown = "; ".join(f"{rel} ({e.reason}: {e.detail})" for rel, e in skipped[:_SHOWN_SKIPPED])
    if not dicts:
        raise ValueError(f"no usable image in {folder}: {counts}" + (f". Skipped: {shown}" if shown else ""))
    if skipped:
        logger.warning("Image folder %s: %s. Skipped %d, e.g. %s", folder, counts, len(skipped), shown)
    else:
        logger.info("Image folder %s: %s.", folder, counts)
    return dicts


def register_image_folder(name: str, folder, min_size: int = 32) -> str:
    """
    Register an image folder as an unlabelled dataset ``name`` (loaded lazily by
    ``load_image_folder``) in Detectron2's ``DatasetCatalog``, with metadata ``image_root`` and
    ``evaluator_type=None``.

    Registering the same name with the same folder and ``min_size`` again does nothing; with a
    different folder (or ``min_size``) it replaces the earlier entry in both catalogs.

    Returns:
        The dataset name.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    folder = _check_folder(folder)
    min_size = _check_min_size(min_size)
    settings = {"folder": folder, "min_size": min_size}
    if name in DatasetCatalog.list():
        if name in MetadataCatalog.list() and MetadataCatalog.get(name).get("image_folder_settings") == settings:
            return name
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, functools.partial(load_image_folder, folder, min_size))
    MetadataCatalog.get(name).set(image_root=folder, evaluator_type=None, image_folder_settings=settings)
    return name
