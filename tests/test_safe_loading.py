"""No user-supplied file runs code when JoinDet loads it.

Each "evil" file below creates a file (the victim) if it is ever unpickled. It is passed through every
public entry point that reads a user's file -- ``JoinDetCheckpointer.load`` / ``resume_or_load``, the
trainer's ``--resume``, ``train_net.py --eval-only MODEL.WEIGHTS``, ``joindet.tools.convert_swav`` and a
prior bank folder -- and must be refused with an error that names the file and what was refused, the
victim never created. Genuine files (a Detectron2 model-zoo ``.pkl`` of numpy arrays, a JoinDet
training checkpoint with its optimizer, scheduler and iteration) still load.
"""
import collections
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from joindet.checkpoint import JoinDetCheckpointer
from joindet.engine.trainer import Trainer
from joindet.priors.bank import PriorBank
from joindet.tools.convert_swav import convert_swav_checkpoint, main as convert_swav_main
from joindet.utils.safe_pickle import RestrictedUnpickler, UnsafePickleError, load_torch

from conftest import MINI_CONFIG, TINY_DATA_OPTS, TINY_MODEL_OPTS, run_train_net

PICKLE_REFUSAL = "refusing to unpickle the global io.open from {}: only numpy arrays and plain containers are allowed"
TORCH_REFUSAL = ("refusing to unpickle the global io.open from {}: only tensors and plain containers are allowed "
                 "(torch.load with weights_only=True)")


class CreatesAFile:
    """Unpickling this object calls ``open(path, "w")``: the file appears if the unpickler ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def victim(tmp_path):
    """The path an evil file would create; each test asserts at its end that it does not exist."""
    return tmp_path / "created_by_unpickling"


def _evil_checkpoint(victim):
    return {"model": {"backbone.weight": CreatesAFile(victim)}, "__author__": "someone"}


def write_evil(folder, victim, kind):
    """An evil file of ``kind``: "pkl" (a pickle, Detectron2's model-zoo suffix), "pth" (torch.save of the
    object) or "raw_pth" (a plain pickle named .pth). Returns (path, the message that refuses it)."""
    if kind == "pth":
        path = folder / "evil.pth"
        torch.save(_evil_checkpoint(victim), path)
        return path, TORCH_REFUSAL.format(path)
    path = folder / ("evil.pkl" if kind == "pkl" else "evil_raw.pth")
    with open(path, "wb") as f:
        pickle.dump(_evil_checkpoint(victim), f)
    return path, (PICKLE_REFUSAL if kind == "pkl" else TORCH_REFUSAL).format(path)


EVIL_KINDS = ["pkl", "pth", "raw_pth"]


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_the_evil_files_do_run_code_when_loaded_unsafely(kind, tmp_path, victim):
    """The control: plain ``pickle.load`` / ``torch.load(weights_only=False)`` create the victim."""
    path, _ = write_evil(tmp_path, victim, kind)
    if kind == "pth":
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert victim.exists()


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Linear(3, 2)


# ----------------------------------------------------------------------------- the unpickler
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_unpickler_refuses_a_global_outside_the_allowlist(protocol, victim):
    data = pickle.dumps(_evil_checkpoint(victim), protocol=protocol)
    with pytest.raises(UnsafePickleError) as refused:
        RestrictedUnpickler(io.BytesIO(data), source="evil.pkl").load()
    assert str(refused.value) == PICKLE_REFUSAL.format("evil.pkl")
    assert refused.value.refused == "io.open"
    assert not victim.exists()



@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_unpickler_reads_numpy_arrays_scalars_and_plain_containers(protocol):
    data = {
        "model": collections.OrderedDict(
            conv=np.arange(24, dtype=np.float32).reshape(2, 3, 4),
            ids=np.array([3, 1, 2], dtype=np.int64),
            fortran=np.asfortranarray(np.eye(3, dtype=np.float64)),
        ),
        "__author__": "test",
        "scalars": [np.float32(2.5), np.int64(7), 1.5, None, True, b"raw", "text"],
        "containers": ({1, 2}, frozenset({3}), bytearray(b"ab")),
    }
    loaded = RestrictedUnpickler(io.BytesIO(pickle.dumps(data, protocol=protocol))).load()
    for name, array in data["model"].items():
        assert loaded["model"][name].dtype == array.dtype
        np.testing.assert_array_equal(loaded["model"][name], array)
    assert loaded["scalars"] == data["scalars"] and loaded["containers"] == data["containers"]
    assert type(loaded["scalars"][0]) is np.float32


def test_the_unpickler_reads_numpy_2_names():
    """numpy 2 writes ``numpy._core.multiarray._reconstruct`` where numpy 1 writes ``numpy.core``; a
    protocol-0 pickle names its globals as text lines, so renaming them gives numpy 2's pickle."""
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = pickle.dumps({"model": {"w": array, "s": np.float32(1.5)}}, protocol=0)
    assert b"numpy.core.multiarray\n_reconstruct" in data
    loaded = RestrictedUnpickler(io.BytesIO(data.replace(b"numpy.core.", b"numpy._core."))).load()
    np.testing.assert_array_equal(loaded["model"]["w"], array)
    assert loaded["model"]["s"] == np.float32(1.5)


def test_the_unpickler_refuses_other_numpy_functions():
    """Only the functions that rebuild arrays are allowed, not the rest of numpy (np.load could read a
    pickle with allow_pickle=True)."""
    with pytest.raises(UnsafePickleError) as refused:
        RestrictedUnpickler(io.BytesIO(pickle.dumps(np.load))).load()
    assert refused.value.refused.startswith("numpy") and refused.value.refused.endswith(".load")


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_load_torch_refuses_an_evil_file_even_when_torch_is_told_not_to(kind, tmp_path, victim, monkeypatch):
    path, message = write_evil(tmp_path, victim, kind)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # flips torch.load's default only
    with pytest.raises(UnsafePickleError) as refused:
        load_torch(path)
    assert str(refused.value) == (message if kind != "pkl" else TORCH_REFUSAL.format(path))
    assert not victim.exists()



def test_load_torch_names_the_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(UnsafePickleError, match=rf"refusing to load {path}: torch.load with weights_only=True "
                                                r"cannot read it safely \(Unsupported operand"):
        load_torch(path)


# ----------------------------------------------------------------------------- the checkpointer
@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_checkpointer_load_refuses_an_evil_file(kind, tmp_path, victim):
    path, message = write_evil(tmp_path, victim, kind)
    with pytest.raises(UnsafePickleError) as refused:
        JoinDetCheckpointer(TinyModel()).load(str(path))
    assert str(refused.value) == message
    with pytest.raises(UnsafePickleError) as refused:  # MODEL.WEIGHTS of a fresh run
        JoinDetCheckpointer(TinyModel(), str(tmp_path / "output")).resume_or_load(str(path), resume=False)
    assert str(refused.value) == message
    assert not victim.exists()



@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_resume_refuses_an_evil_last_checkpoint(kind, tmp_path, victim):
    save_dir = tmp_path / "output"
    save_dir.mkdir()
    path, message = write_evil(save_dir, victim, kind)
    (save_dir / "last_checkpoint").write_text(path.name)
    with pytest.raises(UnsafePickleError) as refused:
        JoinDetCheckpointer(TinyModel(), str(save_dir)).resume_or_load("", resume=True)
    assert str(refused.value) == message
    assert not victim.exists()



def test_a_detectron2_model_zoo_pkl_loads(tmp_path):
    source = TinyModel()
    path = tmp_path / "model_zoo.pkl"
    with open(path, "wb") as f:  # Detectron2's model-zoo layout: numpy arrays under "model"
        pickle.dump({"model": {k: v.numpy() for k, v in source.state_dict().items()}, "__author__": "test",
                     "matching_heuristics": False}, f)
    model = TinyModel()
    assert not torch.equal(model.backbone.weight, source.backbone.weight)
    JoinDetCheckpointer(model).load(str(path))
    for name, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)


def test_a_joindet_training_checkpoint_resumes_with_its_optimizer_scheduler_and_iteration(make_cfg):
    cfg = make_cfg("DATASETS.TEST", "()")
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    path = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    saved = load_torch(path)  # weights_only=True reads all of it: weights, optimizer, hooks' state, iteration
    assert "optimizer" in saved["trainer"]["_trainer"] and "LRScheduler" in saved["trainer"]["hooks"]

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)  # OUTPUT_DIR/last_checkpoint -> model_final.pth
    assert resumed.start_iter == cfg.SOLVER.MAX_ITER
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    old, new = trainer.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert old["state"].keys() == new["state"].keys() and old["state"]
    for index, state in old["state"].items():
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(new["state"][index][k])) for k, v in state.items())
    assert resumed.scheduler.last_epoch == trainer.scheduler.last_epoch


def test_trainer_resume_refuses_an_evil_last_checkpoint(make_cfg, victim):
    cfg = make_cfg("DATASETS.TEST", "()")
    trainer = Trainer(cfg)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    path, message = write_evil(Path(cfg.OUTPUT_DIR), victim, "pth")
    with open(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"), "w") as f:
        f.write(path.name)
    with pytest.raises(UnsafePickleError) as refused:
        trainer.resume_or_load(resume=True)
    assert str(refused.value) == message
    assert not victim.exists()



def test_train_net_eval_only_refuses_evil_model_weights(subprocess_env, tmp_path, victim):
    path, message = write_evil(tmp_path, victim, "pkl")
    opts = [*TINY_DATA_OPTS, *TINY_MODEL_OPTS, "OUTPUT_DIR", str(tmp_path / "run"), "MODEL.WEIGHTS", str(path)]
    run = run_train_net(["--config-file", str(MINI_CONFIG), "--eval-only", *opts], subprocess_env)
    assert run.returncode != 0
    assert f"UnsafePickleError: {message}" in run.stdout, run.stdout[-3000:]
    assert not victim.exists()



# ----------------------------------------------------------------------------- convert_swav
@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_convert_swav_refuses_an_evil_input(kind, tmp_path, victim, capsys):
    path, message = write_evil(tmp_path, victim, kind)
    refusal = message if kind != "pkl" else TORCH_REFUSAL.format(path)  # SwAV inputs are torch files
    out = tmp_path / "converted.pth"
    with pytest.raises(ValueError) as refused:
        convert_swav_checkpoint(path, out)
    assert str(refused.value) == f"cannot load {str(path)!r} as a PyTorch checkpoint: {refusal}"
    assert convert_swav_main([str(path), str(out)]) == 2
    assert refusal in capsys.readouterr().err
    assert not out.exists()
    assert not victim.exists()



# ----------------------------------------------------------------------------- prior bank folders
def _bank_with_one_version(root):
    bank = PriorBank(root)
    boxes = [np.array([[0, 0, 10, 10]], np.float32), np.zeros((0, 4), np.float32)]
    scores = [np.array([0.5], np.float32), np.zeros((0,), np.float32)]
    bank.write_version(0, [1, 2], boxes, scores, info={"source": "test"})
    return bank


@pytest.mark.parametrize("mmap", [True, False])
def test_a_bank_array_that_is_a_pickle_is_refused(tmp_path, victim, mmap):
    bank = _bank_with_one_version(tmp_path / "bank")
    evil = np.empty(1, dtype=object)
    evil[0] = CreatesAFile(victim)
    np.save(bank.version_path(0) / "boxes.npy", evil, allow_pickle=True)  # an object array: a pickle inside
    refusal = "can't be memory-mapped: Python objects" if mmap else "Object arrays cannot be loaded when allow_pickle=False"
    with pytest.raises(ValueError, match=refusal):  # np.load(..., allow_pickle=False) in joindet.priors.bank
        _ = bank.read(0, mmap=mmap).boxes
    assert not victim.exists()



@pytest.mark.parametrize("protocol, error", [(0, json.JSONDecodeError), (pickle.DEFAULT_PROTOCOL, UnicodeDecodeError)])
def test_a_bank_meta_file_is_read_as_json_only(tmp_path, victim, protocol, error):
    """meta.json is parsed with ``json.load``: a pickle there (text for protocol 0, binary otherwise) is
    not valid JSON; the error names the file."""
    bank = _bank_with_one_version(tmp_path / "bank")
    assert bank.read(0).meta["info"] == {"source": "test"}  # plain JSON
    meta = bank.version_path(0) / "meta.json"
    meta.write_bytes(pickle.dumps(CreatesAFile(victim), protocol=protocol))
    with pytest.raises(ValueError, match="prior bank file .*meta.json is not valid JSON") as info:
        _ = bank.read(0).meta
    assert isinstance(info.value.__cause__, error)
    assert not victim.exists()
