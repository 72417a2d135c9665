"""
Loading user-supplied weight files without running code in them.

A pickle can name any importable callable (``os.system``, ``builtins.open``, ...) and have the
unpickler call it: ``pickle.load`` on a file from the internet runs whatever its author chose. Every
file that a user points JoinDet at (``MODEL.WEIGHTS``, a ``--resume`` checkpoint, the SwAV input of
``joindet.tools.convert_swav``) is therefore read by one of two functions here:

* :func:`load_pickle` for Detectron2 / Detectron1 model-zoo ``.pkl`` files (a dict of numpy arrays):
  :class:`RestrictedUnpickler` resolves only the globals in :data:`ALLOWED_GLOBALS` (what numpy
  arrays, numpy scalars and plain containers need, under their numpy 1.x and 2.x names) and refuses
  every other one *before* it is imported or called.
* :func:`load_torch` for ``torch.save`` files (``.pth``): ``torch.load(..., weights_only=True)``,
  torch's own restricted unpickler (tensors, plain containers, torch's dtypes and sizes). The argument
  is passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot turn it off.

A refused file raises :class:`UnsafePickleError` (a ``pickle.UnpicklingError`` and a ``ValueError``)
naming the file and what was refused, e.g. "refusing to unpickle the global posix.system from
evil.pkl: only numpy arrays and plain containers are allowed". Nothing the file names is imported.
"""
import _compat_pickle
import pickle
import re
import zipfile

import torch

__all__ = ["ALLOWED_GLOBALS", "UnsafePickleError", "RestrictedUnpickler", "load_pickle", "load_torch"]

# (module, name) of every global a weights pickle may use. Plain dicts, lists, tuples, strings, bytes,
# numbers, booleans and None have their own pickle opcodes and need no global at all.
ALLOWED_GLOBALS = frozenset({
    # numpy arrays: ndarray.__reduce__ -> _reconstruct(ndarray, shape, typecode) + __setstate__ (numpy 1.x
    # writes numpy.core.*, numpy 2.x numpy._core.*); protocol 5 pickles use numeric._frombuffer instead.
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    # numpy scalars (e.g. a float32 stored next to the arrays): multiarray.scalar(dtype, raw bytes)
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    # bytes in protocol 0-2 pickles written by Python 3 (numpy's raw array data): encode(str, "latin1")
    ("_codecs", "encode"),
    # containers that protocol 0-2 pickles build by calling their class
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
})

_ALLOWED_DESCRIPTION = "only numpy arrays and plain containers are allowed"
_TORCH_DESCRIPTION = "only tensors and plain containers are allowed (torch.load with weights_only=True)"


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A file was not loaded because unpickling it would import or call something outside the allowlist.

    ``refused`` is the dotted name of the global it asked for (None when torch gave only a reason)."""

    def __init__(self, message, refused=None):
        super().__init__(message)
        self.refused = refused


def _refusal(refused, path, allowed):
    return UnsafePickleError(f"refusing to unpickle the global {refused} from {path}: {allowed}", refused)


def _python3_name(module, name):
    """The Python 3 (module, name) of a global that a Python 2 pickle names (``__builtin__.set`` ->
    ``builtins.set``), as ``pickle.Unpickler.find_class`` maps it; other names are returned unchanged."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`.

    Every callable or class a pickle uses (``GLOBAL``, ``STACK_GLOBAL``, ``INST``, extension codes)
    is looked up through ``find_class``; anything else raises :class:`UnsafePickleError` before the
    module is imported. Persistent ids are refused by ``pickle.Unpickler`` itself (no
    ``persistent_load``). ``source`` names the file in the error message.
    """

    def __init__(self, file, *, source="<pickle>", encoding="latin1"):
        # latin1: Python 2 pickles (Detectron1 / Caffe2 model zoo) store numpy's raw data as str
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module, name):
        if _python3_name(module, name) not in ALLOWED_GLOBALS:
            raise _refusal(f"{module}.{name}", self.source, _ALLOWED_DESCRIPTION)
        return super().find_class(module, name)


def load_pickle(path):
    """Unpickle the file ``path`` with :class:`RestrictedUnpickler` (a Detectron2 model-zoo ``.pkl``:
    numpy arrays in plain containers). Raises :class:`UnsafePickleError` naming ``path`` and the
    refused global."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, source=str(path)).load()


def _torch_refusal(path, error):
    """The :class:`UnsafePickleError` for an ``UnpicklingError`` that ``torch.load(weights_only=True)``
    raised on ``path``: the refused global when torch names one, else torch's reason (without its
    advice to load with ``weights_only=False``)."""
    text = str(error)
    refused = re.search(r"GLOBAL (\S+) was not an allowed global", text)
    if refused:
        return _refusal(refused.group(1), path, _TORCH_DESCRIPTION)
    reason = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|$)", text, re.DOTALL)
    reason = reason.group(1) if reason else text.strip().splitlines()[-1]
    return UnsafePickleError(f"refusing to load {path}: torch.load with weights_only=True cannot read it "
                             f"safely ({reason})")


def load_torch(path, map_location="cpu"):
    """``torch.load(path, map_location, weights_only=True)``; a file that torch's restricted unpickler
    refuses raises :class:`UnsafePickleError` naming ``path`` and what was refused.

    A file that is not a ``torch.save`` zip archive (a raw pickle renamed ``.pth``, or the pre-1.6
    format) is also read with :class:`RestrictedUnpickler` when torch refuses it, only to name the
    global the file asks for: torch then reports just the opcode it stopped at.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not zipfile.is_zipfile(path):
            try:
                load_pickle(path)
            except UnsafePickleError as diagnosis:
                raise _refusal(diagnosis.refused, path, _TORCH_DESCRIPTION) from None
            except Exception:  # not a pickle either: torch's reason stands
                pass
        raise _torch_refusal(path, e) from None
