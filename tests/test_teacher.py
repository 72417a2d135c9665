"""The EMA teacher of prior refreshes (``JOINDET.REFRESH.TEACHER_MOMENTUM``): its update against a float64
reference of the formula, its momentum ramp, its checkpointed state, and, in a tiny pretraining, that the
refreshes read the teacher (not the model being trained) and that a resumed run continues with the teacher
it had."""
import os
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import joindet.priors.refresh as refresh_module
from joindet.engine.pretrain import JoinDetTrainer
from joindet.engine.prior_hook import PriorRefreshHook
from joindet.engine.teacher import EMATeacher, teacher_momentum_at
from joindet.priors.refresh import DetectorGenerator

from joindet.priors.bank import PriorBank

from conftest import TINY_DATA_OPTS, TINY_MODEL_OPTS, run_train_net
from test_pretraining import HOOK_KEY, PRETRAIN_CONFIG, TINY_PRETRAIN_OPTS, _pretrain_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# float32 EMA steps against a float64 reference: each step rounds once per multiply-add
EMA_TOL = 1e-6


def _student(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def _perturb(model, step):
    """Move the 'student' as a training step would: new weights, and BatchNorm statistics and counter."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        model[1].running_mean.add_(0.1 * (step + 1))
        model[1].num_batches_tracked.add_(1)


def test_momentum_ramps_up_to_its_value():
    assert teacher_momentum_at(0.99, 0) == pytest.approx(0.1)  # (1 + 0) / (10 + 0): follows the model closely
    assert teacher_momentum_at(0.99, 10) == pytest.approx(11 / 20)
    assert teacher_momentum_at(0.99, 10_000) == 0.99  # capped by the momentum itself
    assert teacher_momentum_at(0.5, 8) == 0.5


def test_update_is_the_ema_of_the_formula():
    student = _student()
    teacher = EMATeacher(0.6)
    reference = {k: v.double().clone() for k, v in student.state_dict().items()}
    teacher.start(student)
    for step in range(6):
        _perturb(student, step)
        teacher.update(student)
        m = min(0.6, (1 + step) / (10 + step))
        for k, v in student.state_dict().items():
            reference[k] = m * reference[k] + (1 - m) * v.double() if v.is_floating_point() else v.double()
    assert teacher.num_updates == 6
    for k, v in teacher.model.state_dict().items():
        torch.testing.assert_close(v.double(), reference[k], rtol=0, atol=EMA_TOL, msg=k)
    assert teacher.model[1].num_batches_tracked.item() == 6  # an integer buffer is copied, not averaged
    # the teacher is a separate, untrained module in eval mode
    assert not teacher.model.training and all(not p.requires_grad for p in teacher.model.parameters())
    assert all(t.data_ptr() != s.data_ptr() for t, s in zip(teacher.model.parameters(), student.parameters()))
    assert not torch.equal(teacher.model[0].weight, student[0].weight)


def test_state_round_trip_and_a_teacher_that_does_not_fit():
    student = _student()
    teacher = EMATeacher(0.9)
    for step in range(3):
        _perturb(student, step)
        teacher.update(student)
    state = teacher.state_dict()
    restored = EMATeacher(0.9)
    restored.load_state_dict(state)  # read from a checkpoint before training starts: kept until start()
    assert restored.model is None
    restored.start(_student(seed=1))  # the copy of the loaded model, then the checkpoint's teacher over it
    assert restored.num_updates == 3
    for (k, v), w in zip(teacher.model.state_dict().items(), restored.model.state_dict().values()):
        assert torch.equal(v, w), k
    other = EMATeacher(0.9)
    other.start(nn.Linear(4, 5))
    with pytest.raises(ValueError, match="the checkpoint's teacher does not fit the model"):
        other.load_state_dict(state)


@pytest.mark.parametrize("momentum", [0.0, 1.0, -0.1, True, "0.9"])
def test_bad_momentum_is_refused(momentum):
    with pytest.raises(ValueError, match="the teacher momentum must be a number in \\(0, 1\\)"):
        EMATeacher(momentum)


def test_a_generator_that_reads_the_training_steps_takes_no_teacher():
    from joindet.priors.refresh import OnlineRescoreGenerator

    with pytest.raises(ValueError, match="rescore_online reads the training steps"):
        PriorRefreshHook(active_priors=None, dataset_dicts=[], dataset_name="x", init_source=None,
                         generator=OnlineRescoreGenerator(), teacher_momentum=0.9)


# 6 iterations, detector refreshes after iterations 2 and 4 (1-based), a checkpoint after iteration 3
TEACHER_RUN_OPTS = ["SOLVER.MAX_ITER", "6", "JOINDET.UPDATE_PERIOD_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "3",
                    "JOINDET.REFRESH.GENERATOR", "detector", "JOINDET.REFRESH.TEACHER_MOMENTUM", "0.5"]


def _train(cfg, resume=False):
    """Train ``cfg``, recording at each refresh the model the generator was given and the student's weights."""
    seen = []
    real = DetectorGenerator.__call__

    def recording_call(self, model, dataset_dicts, previous=None):
        seen.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return real(self, model, dataset_dicts, previous)

    patch = pytest.MonkeyPatch()
    patch.setattr(refresh_module.DetectorGenerator, "__call__", recording_call)
    try:
        torch.manual_seed(0)
        np.random.seed(0)
        trainer = JoinDetTrainer(cfg)
        trainer.resume_or_load(resume=resume)
        trainer.train()
    finally:
        patch.undo()
    hook = next(h for h in trainer._hooks if isinstance(h, PriorRefreshHook))
    return trainer, hook, seen


@pytest.fixture(scope="module")
def teacher_run(synthetic_cache, tmp_path_factory):
    cfg = _pretrain_cfg(tmp_path_factory.mktemp("teacher_run"), *TEACHER_RUN_OPTS)
    trainer, hook, seen = _train(cfg)
    return {"cfg": cfg, "trainer": trainer, "hook": hook, "seen": seen}


def test_refreshes_read_the_teacher(teacher_run):
    trainer, hook, seen = teacher_run["trainer"], teacher_run["hook"], teacher_run["seen"]
    assert len(seen) == 2 and hook.teacher.num_updates == 6
    student = trainer.model
    for model, _ in seen:
        assert model is hook.teacher.model and model is not student
    # the teacher lags the model where training changed it; a frozen weight stays bit-identical
    teacher = hook.teacher.model.state_dict()
    trained = {k for k, p in student.named_parameters() if p.requires_grad}
    frozen = {k for k, p in student.named_parameters() if not p.requires_grad}
    assert frozen and trained
    assert any(not torch.equal(p, teacher[k]) for k, p in student.named_parameters() if k in trained)
    assert all(torch.equal(p, teacher[k]) for k, p in student.named_parameters() if k in frozen)
    versions = [trainer.active_priors.bank.read(v).meta["info"] for v in (1, 2)]
    assert [(v["source"], v["teacher_momentum"]) for v in versions] == [("detector", 0.5)] * 2


def test_checkpoint_holds_the_teacher(teacher_run):
    out = teacher_run["cfg"].OUTPUT_DIR
    state = torch.load(os.path.join(out, "model_0000002.pth"), map_location="cpu", weights_only=False)
    teacher_state = state["trainer"]["hooks"][HOOK_KEY]["teacher"]
    assert teacher_state["num_updates"] == 3 and teacher_state["momentum"] == 0.5
    assert set(teacher_state["model"]) == set(state["model"])


def _train_net_argv(output_dir, resume=False):
    return ["--config-file", str(PRETRAIN_CONFIG), *(["--resume"] if resume else []), *TINY_DATA_OPTS,
            *TINY_MODEL_OPTS, *TINY_PRETRAIN_OPTS, *TEACHER_RUN_OPTS, "OUTPUT_DIR", str(output_dir)]


def test_resume_continues_with_the_teacher_it_had(subprocess_env, tmp_path):
    """Resumed from the checkpoint between the two refreshes, a run ends with the uninterrupted run's
    model and teacher, bit for bit (the second refresh read the same teacher)."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    proc = run_train_net(_train_net_argv(whole), subprocess_env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    shutil.copytree(whole, resumed)
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    (resumed / "model_final.pth").unlink()
    proc = run_train_net(_train_net_argv(resumed, resume=True), subprocess_env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    a, b = (torch.load(d / "model_final.pth", map_location="cpu", weights_only=False) for d in (whole, resumed))
    ta, tb = (x["trainer"]["hooks"][HOOK_KEY]["teacher"] for x in (a, b))
    assert ta["num_updates"] == tb["num_updates"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), f"model: {name}"
        assert torch.equal(ta["model"][name], tb["model"][name]), f"teacher: {name}"
    v2 = [PriorBank(d / "prior_bank").read(2) for d in (whole, resumed)]
    for image_id in v2[0].image_ids:
        np.testing.assert_array_equal(v2[0].get(image_id)[0], v2[1].get(image_id)[0])
