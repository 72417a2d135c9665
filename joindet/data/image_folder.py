"""
A folder of unlabelled images as a pretraining set (e.g. ImageNet's train folder, or the user's
own photos): every image file under the folder, recursively, becomes one Detectron2 dataset dict
``{"file_name", "height", "width", "image_id"}``.

Only headers are read, so listing a large folder is quick: PIL's ``Image.open`` gives the size,
``verify()`` walks the file's structure (catching corrupt and truncated PNGs and the like), and
JPEGs must end with the end-of-image marker (PIL's ``verify`` does not decode JPEG data, and a
cut-off JPEG otherwise only fails when the data loader decodes it mid-training). Unreadable files
and images smaller than ``min_size`` are skipped with one warning. Grayscale, palette and RGBA
images are kept: Detectron2's ``read_image(..., format="RGB")`` converts them to 3 channels.
Height and width are those of the image after EXIF orientation, as ``read_image`` returns it.
"""
import functools
import logging
import os
from typing import List, Sequence, Tuple

from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder", "register_image_folder"]

logger = logging.getLogger("joindet")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_JPEG_EXTENSIONS = (".jpg", ".jpeg")
_JPEG_EOI = b"\xff\xd9"
_JPEG_TAIL_BYTES = 4096  # the EOI marker may be followed by padding or trailing data
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
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


def _jpeg_has_end_marker(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _JPEG_TAIL_BYTES))
        return _JPEG_EOI in f.read()


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright) without decoding pixels, so ``verify`` still works.

    A PNG's ``getexif()`` would load the image; its header EXIF chunk is in ``info`` instead.
    """
    if img.format == "PNG":
        raw = img.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
    else:
        exif = img.getexif()
    return int(exif.get(_EXIF_ORIENTATION, 1))


def _image_size(path: str) -> Tuple[int, int]:
    """(height, width) after EXIF orientation, from the header. Raises on a corrupt file."""
    with Image.open(path) as img:
        width, height = img.size
        orientation = _exif_orientation(img)
        img.verify()
    if path.lower().endswith(_JPEG_EXTENSIONS) and not _jpeg_has_end_marker(path):
        raise OSError("JPEG data is truncated (no end-of-image marker)")
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return height, width


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

    dicts, corrupt, small = [], [], []
    for rel in paths:
        path = os.path.join(folder, rel)
        try:
            height, width = _image_size(path)
        except Exception as e:  # PIL raises many types for bad files (OSError, SyntaxError, ...)
            corrupt.append((rel, f"{type(e).__name__}: {e}"))
            continue
        if height < min_size or width < min_size:
            small.append((rel, f"{width}x{height}"))
            continue
        dicts.append({"file_name": path, "height": height, "width": width, "image_id": len(dicts)})

    counts = (
        f"{len(paths)} image files ({', '.join(extensions)}), {others} other files; "
        f"{len(corrupt)} corrupt, {len(small)} smaller than {min_size} px, {len(dicts)} kept"
    )
    if not dicts:
        details = "; ".join(f"{rel} ({why})" for rel, why in (corrupt + small)[:_SHOWN_SKIPPED])
        raise ValueError(
            f"no usable image in {folder}: {counts}" + (f". Skipped: {details}" if details else "")
        )
    if corrupt or small:
        shown = [f"{rel} (corrupt: {why})" for rel, why in corrupt[:_SHOWN_SKIPPED]]
        shown += [f"{rel} (too small: {why})" for rel, why in small[: max(0, _SHOWN_SKIPPED - len(shown))]]
        logger.warning(
            "Image folder %s: %s. Skipped %d, e.g. %s", folder, counts, len(corrupt) + len(small), "; ".join(shown)
        )
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
