"""
The one way JoinDet writes a file that something else reads later: into a temporary file in the same
folder, flushed and ``fsync``-ed, then ``os.replace``-d over the target. A reader sees the old file
or the new one, never a half-written one; a crash (SIGKILL, power loss) or a full disk during the
write leaves the old file as it was and no temporary file behind (on an exception; after a SIGKILL
a ``.<name>.*.tmp`` file may remain, which nothing reads).

A failed write raises :class:`AtomicWriteError` (an ``OSError`` with the same ``errno``) whose message
names the target path and says that the previous file is unchanged, e.g. for a full disk
(``ENOSPC``): "cannot write .../model_0000099.pth: [Errno 28] No space left on device (the previous
file, if any, is unchanged)".
"""
import contextlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator, IO

__all__ = ["AtomicWriteError", "atomic_write", "write_json_atomic", "fsync_dir"]


class AtomicWriteError(OSError):
    """Writing ``path`` failed; the file at ``path`` (if any) is the one from before the write."""


def fsync_dir(path) -> None:
    """Persist a rename in folder ``path`` (on filesystems that support fsync on directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", encoding: str = None) -> Iterator[IO]:
    """
    ``with atomic_write(path) as f: f.write(...)``: ``f`` is a temporary file next to ``path``; when the
    block ends without an exception it replaces ``path``.

    Args:
        path: the target file (its folder is created).
        mode: "wb" (bytes) or "w" (text, ``encoding`` default UTF-8).
    Raises:
        AtomicWriteError: an ``OSError`` while writing, flushing or renaming (e.g. ENOSPC), naming ``path``.
        Other exceptions of the block propagate unchanged; in every failure the temporary file is removed.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, mode, **({"encoding": encoding or "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(folder)
    except OSError as e:
        if isinstance(e, AtomicWriteError):
            raise
        raise AtomicWriteError(e.errno, f"cannot write {path}: {e} (the previous file, if any, is unchanged)") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)


def write_json_atomic(path, data: Any, *, default: Callable = None, **dump_kwargs) -> str:
    """Write ``data`` as JSON to ``path`` with :func:`atomic_write`; returns ``path``. ``dump_kwargs`` go to
    ``json.dump`` (e.g. ``indent=2``). An object JSON cannot hold raises ``TypeError`` / ``ValueError``
    before ``path`` is touched."""
    text = json.dumps(data, default=default, **dump_kwargs)  # fails before anything is written
    with atomic_write(path, "w") as f:
        f.write(text)
    return os.fspath(path)
