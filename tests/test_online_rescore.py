"""The rescore_online refresh: the objectness recorded during training (joindet.priors.online) equals the
rescore formula on the step's own outputs, is kept per prior from the latest view of one bank version, and
becomes the precedent boxes' new scores (unseen priors keep theirs, unseen images are left out)."""
import numpy as np
import pytest
import torch
from torchvision.ops import box_convert, box_iou

from joindet.priors.online import OnlineObjectness
from joindet.priors.refresh import OnlineRescoreGenerator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Version:
    """A PriorVersion stand-in: a version number and fixed priors per image id."""

    def __init__(self, version, priors):
        self.version, self.priors = version, priors

    def get(self, image_id):
        return self.priors[image_id]


def test_the_latest_view_of_a_version_scores_each_prior():
    rec = OnlineObjectness()
    rec.record(7, 0, 4, [0, 2], [0.2, 0.6])
    rec.record(7, 0, 4, [2, 3], [0.4, 0.9])  # prior 2 seen again: the later view counts
    rec.record(8, 0, 2, [], [])  # a view in which the augmentation dropped every prior
    rec.record(9, 1, 3, [1], [0.5])  # another version: left out of version 0's scores
    latest = rec.gathered(0)
    assert sorted(latest) == [7, 8]
    np.testing.assert_allclose(latest[7], [0.2, np.nan, 0.4, 0.9], rtol=1e-6)
    assert np.isnan(latest[8]).all() and latest[8].shape == (2,)
    rec.record(7, 1, 3, [0], [0.3])  # a view of a new version replaces the image's old views
    np.testing.assert_allclose(rec.gathered(1)[7], [0.3, np.nan, np.nan])
    assert 7 not in rec.gathered(0)
    with pytest.raises(ValueError, match="image 5: prior indices \\[4\\] outside its 3 priors"):
        rec.record(5, 0, 3, [4], [0.1])
    rec.clear()
    assert len(rec) == 0


class _RecordingModel(torch.nn.Module):
    """The part of JoinDet a generator that reads the training steps is wired to."""

    objectness_recorder = None

    def set_objectness_recorder(self, recorder):
        self.objectness_recorder = recorder


def test_generator_scores_the_precedent_boxes_with_the_recorded_means():
    model = _RecordingModel()
    generator = OnlineRescoreGenerator()
    generator.attach(model)  # what the refresh hook does before training
    assert model.objectness_recorder is generator.recorder
    boxes = {i: np.float32([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]]) for i in (1, 2)}
    previous = _Version(3, {i: (b, np.float32([0.9, 0.5, 0.1])) for i, b in boxes.items()})
    model.objectness_recorder.record(1, 3, 3, [1, 2], [0.8, 0.05])
    out = generator(model, [{"image_id": 1}, {"image_id": 2}], previous)
    assert sorted(out) == [1]  # image 2 had no view: it keeps its priors (the hook's merge)
    np.testing.assert_array_equal(out[1][0], boxes[1])
    np.testing.assert_allclose(out[1][1], [0.9, 0.8, 0.05])  # prior 0 unseen: its precedent score
    assert len(model.objectness_recorder) == 0  # cleared for the next version
    with pytest.raises(ValueError, match="inside a training run"):
        OnlineRescoreGenerator()(torch.nn.Module(), [{"image_id": 1}], previous)
    with pytest.raises(ValueError, match="needs a JoinDet model"):
        OnlineRescoreGenerator().attach(torch.nn.Module())
    with pytest.raises(ValueError, match="RESCORE_QUALITY: unknown rescore quality 'area'"):
        OnlineObjectness("area")


@pytest.mark.parametrize("quality", ["objectness_x_iou", "matched_objectness"])
def test_recorded_quality_is_the_rescore_formula_on_the_steps_outputs(synthetic_cache, tmp_path, quality):
    from joindet.engine.pretrain import JoinDetTrainer
    from test_pretraining import _pretrain_cfg

    cfg = _pretrain_cfg(tmp_path / "out", "SOLVER.MAX_ITER", "1", "JOINDET.REFRESH.GENERATOR", "rescore_online",
                        "JOINDET.REFRESH.RESCORE_QUALITY", quality)
    trainer = JoinDetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    seen = []
    record = model.record_objectness

    def capture(outputs, targets, batched_inputs):
        seen.append(({k: v.detach().clone() for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")},
                     [t["boxes"].clone() for t in targets], batched_inputs))
        return record(outputs, targets, batched_inputs)

    model.record_objectness = capture
    trainer.train()
    recorder = trainer.prior_hook.generator.recorder
    assert model.objectness_recorder is recorder  # wired by the refresh hook
    assert len(seen) == 1 and len(recorder) > 0 and recorder.quality == quality
    outputs, target_boxes, batch = seen[0]
    means = recorder.gathered(0)
    for i, (t, x) in enumerate(zip(target_boxes, batch)):
        prob = outputs["pred_logits"][i].sigmoid().amax(-1)
        pred = box_convert(outputs["pred_boxes"][i], "cxcywh", "xyxy")
        iou = box_iou(box_convert(t, "cxcywh", "xyxy"), pred)
        if quality == "objectness_x_iou":
            expected = (iou * prob[None]).amax(1)
        else:  # the objectness of the query overlapping the prior most
            expected = torch.stack([prob[int(row.argmax())] if row.max() > 0 else prob.new_zeros(()) for row in iou])
        got = means[x["image_id"]]
        assert got.shape == (x["num_priors"],)
        index = x["instances"].gt_prior_index.numpy()
        if sum(y["image_id"] == x["image_id"] for y in batch) == 1:  # (an image twice in a batch: the later view)
            np.testing.assert_allclose(got[index], expected.numpy(), rtol=1e-5, atol=1e-6)
            assert np.isnan(np.delete(got, index)).all()  # the priors the crop dropped
