"""JOINDET.PRIORS.OBJECTNESS_TARGET: with "refreshed_score" the priors of a refreshed bank version supervise
their matched queries' objectness with score / the image's best score (version 0's priors and the default
"one": target 1), from the mapper's outputs through the model's targets into the criterion."""
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import Instances

from joindet.engine.pretrain import JoinDetTrainer, bank_dir
from joindet.modeling.joindet import prior_objectness_targets
from joindet.priors.bank import PriorBank

from test_pretraining import DATASET, _pretrain_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _input(version, scores, best):
    inst = Instances((8, 8))
    inst.gt_scores = torch.tensor(scores, dtype=torch.float32)
    return {"instances": inst, "prior_version": version, "prior_best_score": best, "file_name": "a.png"}


def test_targets_per_mode_and_version():
    assert prior_objectness_targets(_input(2, [0.4, 0.2], 0.8), "one") is None
    torch.testing.assert_close(prior_objectness_targets(_input(2, [0.4, 0.2], 0.8), "refreshed_score"),
                               torch.tensor([0.5, 0.25]))
    # version 0: a heuristic's scores, hard targets
    torch.testing.assert_close(prior_objectness_targets(_input(0, [0.4, 0.2], 0.8), "refreshed_score"),
                               torch.ones(2))
    # no positive score in the entry: hard targets; negative scores clip to 0
    torch.testing.assert_close(prior_objectness_targets(_input(1, [0.0, 0.0], 0.0), "refreshed_score"),
                               torch.ones(2))
    torch.testing.assert_close(prior_objectness_targets(_input(1, [-0.1, 0.3], 0.3), "refreshed_score"),
                               torch.tensor([0.0, 1.0]))
    assert prior_objectness_targets(_input(1, [], 0.0), "refreshed_score").shape == (0,)
    with pytest.raises(ValueError, match="'prior_best_score'.*a.png"):
        prior_objectness_targets({k: v for k, v in _input(1, [0.1], 0.1).items() if k != "prior_best_score"},
                                 "refreshed_score")
    with pytest.raises(ValueError, match="must be one of"):
        prior_objectness_targets(_input(1, [0.1], 0.1), "score")


def _criterion_targets(cfg, version_scores):
    """One training step's targets as the criterion receives them, on a bank whose version 1 holds
    three fixed boxes per image with ``version_scores``."""
    trainer = JoinDetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    dicts = DatasetCatalog.get(DATASET)
    boxes = np.float32([[4, 4, 40, 40], [10, 20, 50, 60], [2, 2, 60, 60]])
    PriorBank(bank_dir(cfg)).write_version(
        1, [d["image_id"] for d in dicts], [boxes] * len(dicts), [np.float32(version_scores)] * len(dicts))
    trainer.active_priors.set_version(1)
    batch = next(iter(trainer.data_loader))
    seen = []
    criterion = trainer.model.criterion
    forward = criterion.forward

    def capture(outputs, targets):
        seen.append(targets)
        return forward(outputs, targets)

    criterion.forward = capture
    trainer.model.train()
    losses = trainer.model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    return batch, seen[0]


def test_refreshed_scores_reach_the_criterion(synthetic_cache, tmp_path):
    scores = [0.6, 0.3, 0.15]
    cfg = _pretrain_cfg(tmp_path / "soft", "SOLVER.MAX_ITER", "1", "JOINDET.LSJ.MIN_SCALE", "1.0",
                        "JOINDET.LSJ.MAX_SCALE", "1.0", "JOINDET.PRIORS.OBJECTNESS_TARGET", "refreshed_score")
    batch, targets = _criterion_targets(cfg, scores)
    for x, t in zip(batch, targets):
        assert x["prior_version"] == 1 and x["prior_best_score"] == pytest.approx(0.6)
        kept = x["instances"].gt_prior_index.numpy()
        assert len(kept) >= 1
        torch.testing.assert_close(t["quality"].cpu(), torch.tensor(scores)[kept] / 0.6)
        assert "weight" not in t
    cfg = _pretrain_cfg(tmp_path / "hard", "SOLVER.MAX_ITER", "1")
    _, targets = _criterion_targets(cfg, scores)
    assert all("quality" not in t and "weight" not in t for t in targets)


def test_refreshed_scores_as_loss_weights_reach_the_criterion(synthetic_cache, tmp_path):
    """JOINDET.PRIORS.LOSS_WEIGHT refreshed_score: each prior's normalised score weighs its pair's terms; the
    objectness target stays 1."""
    scores = [0.6, 0.3, 0.15]
    cfg = _pretrain_cfg(tmp_path / "weighted", "SOLVER.MAX_ITER", "1", "JOINDET.LSJ.MIN_SCALE", "1.0",
                        "JOINDET.LSJ.MAX_SCALE", "1.0", "JOINDET.PRIORS.LOSS_WEIGHT", "refreshed_score")
    batch, targets = _criterion_targets(cfg, scores)
    for x, t in zip(batch, targets):
        kept = x["instances"].gt_prior_index.numpy()
        torch.testing.assert_close(t["weight"].cpu(), torch.tensor(scores)[kept] / 0.6)
        assert "quality" not in t
