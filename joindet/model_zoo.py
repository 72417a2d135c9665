"""JoinDet's configs by name, from the installed package -- as ``detectron2.model_zoo`` resolves Detectron2's.

The configs ship inside the package (``joindet/configs/``; the checkout's ``configs/`` and
``projects/JoinDet/configs/`` are links to it): the yacs configs by their path under ``configs/``
(``mini/pretrain_synth.yaml``) and the LazyConfigs of ``projects/JoinDet/configs/`` under ``lazy/``
(``lazy/mini_joindet_pretrain_synth.py``). Everywhere a config file is read through Detectron2's
``PathManager`` (``--config-file`` of ``train_net.py`` / ``joindet-train`` and of the tools, ``_BASE_``,
``merge_from_file``, ``LazyConfig.load``), a packaged config can be named ``joindet://<name>``::

    joindet-train --config-file joindet://mini/pretrain_synth.yaml SOLVER.MAX_ITER 10
    python -m joindet.tools.compare_priors --config-file joindet://mini/pretrain_synth.yaml ...

    from joindet import model_zoo
    model_zoo.get_config_file("mini/pretrain_synth.yaml")  # its path in the installed package
    cfg = model_zoo.get_config("mini/pretrain_synth.yaml")  # the yacs cfg (JoinDet's keys added)
"""
import difflib
import importlib.resources
import os
import posixpath
from pathlib import Path
from typing import List

from detectron2.utils.file_io import PathHandler, PathManager

__all__ = ["PREFIX", "config_root", "list_configs", "get_config_file", "get_config", "resolve_config_file"]

PREFIX = "joindet://"
_SUFFIXES = (".yaml", ".py")


def config_root() -> Path:
    """The folder of the packaged configs (``joindet/configs`` of the install or of the checkout)."""
    root = importlib.resources.files("joindet").joinpath("configs")
    if not isinstance(root, Path):  # e.g. a zipped install: yacs and LazyConfig need real files
        raise RuntimeError(f"joindet's packaged configs are not on the file system ({root!r}): install joindet "
                           "as a folder (pip install, not a zip)")
    if not root.is_dir():
        raise RuntimeError(f"joindet's packaged configs are missing: no folder {root} (a broken install?)")
    return root


def list_configs() -> List[str]:
    """Names of the packaged configs: every ``.yaml`` (the yacs configs, their ``Base-`` files and the method
    lists of ``joindet.tools.ablation --methods``) and the LazyConfigs ``lazy/*.py`` (not the fragments under
    ``lazy/common/`` that they import)."""
    root = config_root()
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in _SUFFIXES and p.is_file()]
    return sorted(n for n in names if not (n.endswith(".py") and (n.startswith("lazy/common/") or "/" not in n)))


def _normalize(name: str) -> str:
    """``name`` without the ``joindet://`` prefix, ``.``/``..`` folded; ``ValueError`` if it leaves the folder."""
    if name.startswith(PREFIX):
        name = name[len(PREFIX):]
    norm = posixpath.normpath(name.replace(os.sep, "/")) if name else ""
    if not norm or norm == "." or norm.startswith("../") or norm == ".." or norm.startswith("/"):
        raise ValueError(f"{PREFIX}{name}: not a config name (a path under joindet's configs folder, e.g. "
                         f"{PREFIX}mini/pretrain_synth.yaml)")
    return norm


def _not_found(name: str) -> FileNotFoundError:
    available = list_configs()
    close = difflib.get_close_matches(name, available, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
    return FileNotFoundError(f"{PREFIX}{name}: no such config in joindet's packaged configs ({config_root()})."
                             f"{hint} Available: {', '.join(available)}")


def get_config_file(name: str) -> str:
    """The path of the packaged config ``name`` (relative to ``configs/``, e.g. ``mini/pretrain_synth.yaml``
    or ``lazy/mini_joindet_pretrain_synth.py``; a leading ``joindet://`` is accepted). Raises
    ``FileNotFoundError`` naming the closest and all available names when there is none."""
    norm = _normalize(name)
    path = config_root().joinpath(*norm.split("/"))
    if not path.is_file():
        raise _not_found(norm)
    return str(path)


def resolve_config_file(path: str) -> str:
    """A ``--config-file`` argument as a file path: ``joindet://<name>`` becomes the packaged file; another
    path is returned as given. ``FileNotFoundError`` when a local path does not exist (naming the packaged
    config of the same name, if there is one: a checkout's ``configs/...`` path run from elsewhere)."""
    path = os.fspath(path)
    if path.startswith(PREFIX):
        return get_config_file(path)
    if not path or "://" in path or os.path.isfile(path):
        return path
    message = f"config file {path!r} not found (relative to {os.getcwd()})"
    packaged = _packaged_name(path)
    if packaged:
        message += f"; the installed package has it as {PREFIX}{packaged}"
    else:
        message += f"; packaged configs are named {PREFIX}<name>, e.g. {PREFIX}mini/pretrain_synth.yaml"
    raise FileNotFoundError(message)


def _packaged_name(path: str) -> str:
    """The packaged config a checkout path names (``configs/<name>`` -> ``<name>``,
    ``projects/JoinDet/configs/<name>`` -> ``lazy/<name>``), or "" when there is none."""
    rel = path.replace(os.sep, "/")
    for head, prefix in (("projects/JoinDet/configs/", "lazy/"), ("configs/", "")):
        if head in rel:
            name = prefix + rel.split(head, 1)[1]
            try:
                get_config_file(name)
            except (FileNotFoundError, ValueError):
                return ""
            return _normalize(name)
    return ""


def get_config(name: str):
    """The packaged config ``name`` loaded: a yacs ``CfgNode`` (Detectron2's defaults, JoinDet's keys, the
    file merged) for a ``.yaml``, an omegaconf ``DictConfig`` (``LazyConfig.load``) for a ``.py``."""
    path = get_config_file(name)
    if path.endswith(".py"):
        from detectron2.config import LazyConfig

        return LazyConfig.load(path)
    from detectron2.config import get_cfg

    from .config import add_joindet_config

    cfg = get_cfg()
    add_joindet_config(cfg)
    cfg.merge_from_file(path)
    return cfg


class JoinDetConfigHandler(PathHandler):
    """``joindet://<name>`` in Detectron2's ``PathManager``: the packaged config file ``<name>`` (and
    folders of them, for LazyConfig's relative imports)."""

    PREFIX = PREFIX

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _local(self, path):
        return str(config_root().joinpath(*_normalize(path).split("/")))

    def _get_local_path(self, path, **kwargs):
        return get_config_file(path)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        return open(get_config_file(path), mode, buffering=buffering)

    def _exists(self, path, **kwargs):
        return os.path.exists(self._local(path))

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._local(path))

    def _isdir(self, path, **kwargs):
        return os.path.isdir(self._local(path))

    def _ls(self, path, **kwargs):
        return os.listdir(self._local(path))


PathManager.register_handler(JoinDetConfigHandler())
