"""SetCriterion (focal / L1 / GIoU losses, aux and two-stage suffixes, num_boxes normalisation),
build_weight_dict, against hand-computed values."""

import math

import pytest
import torch

from joindet.modeling import criterion as criterion_module
from joindet.modeling.criterion import SetCriterion, build_weight_dict
from joindet.modeling.matcher import HungarianMatcher

ALPHA, GAMMA = 0.25, 2.0
EPS32 = torch.finfo(torch.float32).eps

# float32 focal loss against the float64 formula by hand: per term about ten float32 operations, the
# transcendental ones (exp, log1p in the sigmoid and the BCE) within a few ulps in any SIMD kernel, and the
# (1 - p_t) of a matched query carrying p's relative error times p / (1 - p) (<= 9 for these logits):
# 64 ulps of the total, ~8e-6 relative, far below what a wrong alpha, gamma or normaliser changes.
FOCAL_REL = 64 * EPS32


def _sum_rtol(num_terms):
    """Relative tolerance between two float32 sums of the same ``num_terms`` non-negative terms, taken in
    other orders or by other kernels (a batch's SIMD body vs its scalar tail): every term within one ulp and
    each partial sum rounded once, so within ``num_terms + 1`` ulps of the total."""
    return (num_terms + 1) * EPS32


class FixedMatcher(torch.nn.Module):
    """Returns the given assignment, whatever the predictions."""

    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return [
            (torch.tensor(p, dtype=torch.int64), torch.tensor(t, dtype=torch.int64))
            for p, t in self.indices
        ]


def _focal_by_hand(logit, target):
    p = 1.0 / (1.0 + math.exp(-logit))
    bce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p if target == 1 else 1 - p
    alpha_t = ALPHA if target == 1 else 1 - ALPHA
    return alpha_t * (1 - p_t) ** GAMMA * bce


def _criterion(num_classes, matcher=None, **kwargs):
    return SetCriterion(
        num_classes,
        matcher or HungarianMatcher(),
        build_weight_dict(2, 5, 2, 0, False),
        focal_alpha=ALPHA,
        focal_gamma=GAMMA,
        **kwargs,
    )


def _random_batch(gen, batch, num_queries, num_classes, counts):
    outputs = {
        "pred_logits": torch.randn(batch, num_queries, num_classes, generator=gen),
        "pred_boxes": torch.cat(
            [
                torch.rand(batch, num_queries, 2, generator=gen) * 0.6 + 0.2,
                torch.rand(batch, num_queries, 2, generator=gen) * 0.3 + 0.05,
            ],
            dim=-1,
        ),
    }
    targets = []
    for n in counts:
        boxes = torch.cat(
            [
                torch.rand(n, 2, generator=gen) * 0.6 + 0.2,
                torch.rand(n, 2, generator=gen) * 0.3 + 0.05,
            ],
            1,
        )
        targets.append(
            {"labels": torch.randint(0, num_classes, (n,), generator=gen), "boxes": boxes}
        )
    return outputs, targets


def test_focal_loss_by_hand():
    logits = [[1.5, -0.5], [-2.0, 0.3], [0.1, 2.2]]  # Q = 3, C = 2
    outputs = {"pred_logits": torch.tensor([logits]), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    targets = [{"labels": torch.tensor([1, 0]), "boxes": torch.full((2, 4), 0.5)}]
    # query 2 <- target 0 (class 1), query 0 <- target 1 (class 0); query 1 unmatched
    crit = _criterion(2, FixedMatcher([([0, 2], [1, 0])]))
    onehot = [[1, 0], [0, 0], [0, 1]]
    want = (
        sum(_focal_by_hand(logits[q][c], onehot[q][c]) for q in range(3) for c in range(2)) / 2
    )  # 2 boxes
    got = crit(outputs, targets)["loss_ce"]
    assert got.item() == pytest.approx(want, rel=FOCAL_REL)


def _soft_focal_by_hand(logit, target):
    """The focal loss of a soft target t: BCE(p, t) x alpha_t x (1 - p_t)^gamma, with p_t and alpha_t
    interpolated linearly in t (fvcore's formula; equal to the hard one for t in {0, 1})."""
    p = 1.0 / (1.0 + math.exp(-logit))
    bce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = ALPHA * target + (1 - ALPHA) * (1 - target)
    return alpha_t * (1 - p_t) ** GAMMA * bce


def test_quality_is_the_soft_target_of_the_matched_queries():
    logits = [[1.5], [-2.0], [0.1], [0.7]]  # Q = 4, C = 1
    outputs = {"pred_logits": torch.tensor([logits, logits]), "pred_boxes": torch.full((2, 4, 4), 0.5)}
    boxes = torch.full((2, 4), 0.5)
    # image 0: query 0 <- target 1 (quality 0.25), query 2 <- target 0 (quality 0.8); image 1: no quality
    targets = [{"labels": torch.tensor([0, 0]), "boxes": boxes, "quality": torch.tensor([0.8, 0.25])},
               {"labels": torch.tensor([0, 0]), "boxes": boxes}]
    crit = _criterion(1, FixedMatcher([([0, 2], [1, 0]), ([1, 3], [0, 1])]))
    want_targets = [[0.25, 0.0, 0.8, 0.0], [0.0, 1.0, 0.0, 1.0]]
    want = sum(_soft_focal_by_hand(logits[q][0], want_targets[b][q]) for b in range(2) for q in range(4)) / 4
    assert crit(outputs, targets)["loss_ce"].item() == pytest.approx(want, rel=FOCAL_REL)
    # quality 1 everywhere is the hard target
    ones = [dict(t, quality=torch.ones(2)) for t in targets]
    plain = [{k: v for k, v in t.items() if k != "quality"} for t in targets]
    torch.testing.assert_close(crit(outputs, ones)["loss_ce"], crit(outputs, plain)["loss_ce"])


def test_box_losses_by_hand():
    pred = [0.5, 0.5, 0.2, 0.2]  # xyxy (0.4, 0.4, 0.6, 0.6)
    tgt = [0.6, 0.4, 0.3, 0.2]  # xyxy (0.45, 0.3, 0.75, 0.5)
    outputs = {
        "pred_logits": torch.zeros(1, 2, 1),
        "pred_boxes": torch.tensor([[[0.1, 0.1, 0.1, 0.1], pred]]),
    }
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([tgt])}]
    losses = _criterion(1, FixedMatcher([([1], [0])]))(outputs, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.1 + 0.1 + 0.1 + 0.0, abs=1e-6)
    inter = (0.6 - 0.45) * (0.5 - 0.4)
    union = 0.2 * 0.2 + 0.3 * 0.2 - inter
    hull = (0.75 - 0.4) * (0.6 - 0.3)
    giou = inter / union - (hull - union) / hull
    assert losses["loss_giou"].item() == pytest.approx(1 - giou, abs=1e-5)


def test_perfect_boxes_give_zero_box_losses():
    gen = torch.Generator().manual_seed(0)
    outputs, targets = _random_batch(gen, 2, 6, 3, [3, 2])
    outputs["pred_boxes"][0, :3] = targets[0]["boxes"]
    outputs["pred_boxes"][1, 2:4] = targets[1]["boxes"]
    losses = _criterion(3)(outputs, targets)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-5)


def test_aux_and_enc_suffixes_and_class_agnostic_enc():
    gen = torch.Generator().manual_seed(1)
    outputs, targets = _random_batch(gen, 2, 5, 3, [2, 3])
    aux = [_random_batch(gen, 2, 5, 3, [])[0] for _ in range(2)]
    enc = _random_batch(gen, 2, 7, 1, [])[0]  # class-agnostic proposals: C' = 1
    outputs.update(aux_outputs=aux, enc_outputs=enc)
    crit = SetCriterion(
        3, HungarianMatcher(), build_weight_dict(2, 5, 2, num_aux=2, two_stage=True)
    )
    losses = crit(outputs, targets)
    base = ("loss_ce", "loss_bbox", "loss_giou")
    assert set(losses) == {k + s for k in base for s in ("", "_0", "_1", "_enc")}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    # each aux layer is scored exactly as if it were the final layer
    for i, a in enumerate(aux):
        alone = crit(a, targets)
        for k in base:
            torch.testing.assert_close(losses[f"{k}_{i}"], alone[k])
    # enc outputs: every target relabelled 0
    agnostic = [{"labels": torch.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
    alone = SetCriterion(1, HungarianMatcher(), {})(enc, agnostic)
    for k in base:
        torch.testing.assert_close(losses[f"{k}_enc"], alone[k])
    weighted = crit.weighted(losses)
    assert set(weighted) == set(losses)
    torch.testing.assert_close(weighted["loss_bbox_1"], 5 * losses["loss_bbox_1"])


def test_duplicated_batch_leaves_losses_unchanged():
    """Sums and num_boxes both double when every image is duplicated, so every loss is unchanged;
    the normaliser is the batch's box count (here 5 boxes), not the number of images."""
    gen = torch.Generator().manual_seed(2)
    outputs, targets = _random_batch(gen, 2, 6, 3, [3, 2])
    crit = _criterion(3)
    once = crit(outputs, targets)
    twice = crit({k: torch.cat([v, v]) for k, v in outputs.items()}, targets + targets)
    # other reduction lengths: the same value up to the rounding of sums of up to B * Q * C = 4 * 6 * 3 terms
    for k in once:
        torch.testing.assert_close(twice[k], once[k], rtol=_sum_rtol(4 * 6 * 3), atol=0)
    indices = crit.matcher(outputs, targets)
    raw = crit.get_loss("boxes", outputs, targets, indices, num_boxes=1.0)["loss_bbox"]
    torch.testing.assert_close(once["loss_bbox"], raw / 5)


def test_image_without_targets():
    gen = torch.Generator().manual_seed(3)
    outputs, targets = _random_batch(gen, 2, 4, 2, [2, 0])
    outputs["pred_logits"].requires_grad_(True)
    outputs["pred_boxes"].requires_grad_(True)
    crit = _criterion(2)
    losses = crit(outputs, targets)
    first = crit({k: v[:1] for k, v in outputs.items()}, targets[:1])
    # box losses come from the first image alone; the empty image adds its all-negative focal sum
    torch.testing.assert_close(losses["loss_bbox"], first["loss_bbox"])
    torch.testing.assert_close(losses["loss_giou"], first["loss_giou"])
    negatives = sum(_focal_by_hand(x, 0) for x in outputs["pred_logits"][1].flatten().tolist())
    assert losses["loss_ce"].item() == pytest.approx(
        first["loss_ce"].item() + negatives / 2, rel=1e-5
    )
    sum(crit.weighted(losses).values()).backward()
    assert (
        torch.isfinite(outputs["pred_logits"].grad).all()
        and torch.isfinite(outputs["pred_boxes"].grad).all()
    )

    # no targets anywhere: num_boxes clamps to 1, box losses are 0
    none = crit({k: v.detach() for k, v in outputs.items()}, [targets[1], targets[1]])
    assert none["loss_bbox"].item() == 0.0 and none["loss_giou"].item() == 0.0
    all_neg = sum(_focal_by_hand(x, 0) for x in outputs["pred_logits"].flatten().tolist())
    assert none["loss_ce"].item() == pytest.approx(all_neg, rel=1e-5)


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    """World size 2, the other process holds 7 boxes: num_boxes = (3 + 7) / 2."""
    monkeypatch.setattr(criterion_module.comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(7))
    targets = [{"labels": torch.zeros(3, dtype=torch.int64), "boxes": torch.full((3, 4), 0.5)}]
    assert _criterion(1).get_num_boxes(targets, torch.device("cpu")) == pytest.approx(5.0)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t: t.add_(0))
    assert _criterion(1).get_num_boxes(targets[:0], torch.device("cpu")) == 1.0


def test_subclass_adds_a_final_layer_loss():
    class WithCount(SetCriterion):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_map["count"] = self.loss_count

        def loss_count(self, outputs, targets, indices, num_boxes):
            return {"loss_count": torch.tensor(float(sum(len(p) for p, _ in indices)))}

    gen = torch.Generator().manual_seed(4)
    outputs, targets = _random_batch(gen, 2, 4, 2, [1, 3])
    outputs["aux_outputs"] = [_random_batch(gen, 2, 4, 2, [])[0]]
    weights = build_weight_dict(2, 5, 2, num_aux=1, two_stage=False, extra={"loss_count": 0.5})
    crit = WithCount(
        2,
        HungarianMatcher(),
        weights,
        losses=("labels", "boxes", "count"),
        aux_losses=("labels", "boxes"),
    )
    losses = crit(outputs, targets)
    assert losses["loss_count"].item() == 4.0 and "loss_count_0" not in losses
    assert crit.weighted(losses)["loss_count"].item() == 2.0
    with pytest.raises(ValueError, match="unknown loss"):
        crit.get_loss("masks", outputs, targets, [], 1.0)
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(2, HungarianMatcher(), weights, losses=("labels", "count"))(outputs, targets)


def test_build_weight_dict_and_weighted():
    w = build_weight_dict(2.0, 5.0, 1.5, num_aux=2, two_stage=True, extra={"loss_embed": 1.0})
    assert w == {
        "loss_ce": 2.0,
        "loss_bbox": 5.0,
        "loss_giou": 1.5,
        "loss_ce_0": 2.0,
        "loss_bbox_0": 5.0,
        "loss_giou_0": 1.5,
        "loss_ce_1": 2.0,
        "loss_bbox_1": 5.0,
        "loss_giou_1": 1.5,
        "loss_ce_enc": 2.0,
        "loss_bbox_enc": 5.0,
        "loss_giou_enc": 1.5,
        "loss_embed": 1.0,
    }
    crit = SetCriterion(1, HungarianMatcher(), {"loss_ce": 2.0})
    out = crit.weighted({"loss_ce": torch.tensor(3.0), "loss_other": torch.tensor(1.0)})
    assert set(out) == {"loss_ce"} and out["loss_ce"].item() == 6.0
    with pytest.raises(ValueError, match="num_aux"):
        build_weight_dict(1, 1, 1, num_aux=-1, two_stage=False)
    with pytest.raises(ValueError, match="override"):
        build_weight_dict(1, 1, 1, num_aux=0, two_stage=False, extra={"loss_ce": 3.0})


def test_class_count_mismatch_is_an_error():
    outputs = {"pred_logits": torch.zeros(1, 2, 3), "pred_boxes": torch.full((1, 2, 4), 0.5)}
    with pytest.raises(ValueError, match="classes"):
        _criterion(2)(outputs, [{"labels": torch.tensor([0]), "boxes": torch.full((1, 4), 0.5)}])


def test_drop_loss_leaves_out_the_no_object_terms_of_queries_off_every_prior():
    from joindet.modeling.joindet import ObjectEmbeddingCriterion

    # one image, one prior (cx, cy, w, h) = (0.3, 0.3, 0.2, 0.2); query 0 is matched to it, query 1 overlaps it at
    # IoU 0.6 (same box shifted), query 2 at IoU 0.1 (a box around it), query 3 lies elsewhere (IoU 0)
    prior = [0.3, 0.3, 0.2, 0.2]
    boxes = [prior, [0.3 + 0.2 / 3 * 0.75, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2 * math.sqrt(10), 0.2 * math.sqrt(10)],
             [0.8, 0.8, 0.1, 0.1]]
    logits = [[1.5], [-0.5], [0.3], [0.7]]
    outputs = {"pred_logits": torch.tensor([logits]), "pred_boxes": torch.tensor([boxes]),
               "pred_embed": torch.zeros(1, 4, 2)}
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([prior]), "embeddings": torch.zeros(1, 2)}]
    terms = [_focal_by_hand(logits[0][0], 1.0)] + [_focal_by_hand(logits[q][0], 0.0) for q in (1, 2, 3)]

    def loss(drop):
        crit = ObjectEmbeddingCriterion(1, FixedMatcher([([0], [0])]), build_weight_dict(2, 5, 2, 0, False),
                                        focal_alpha=ALPHA, focal_gamma=GAMMA, drop_loss_iou=drop)
        return crit(outputs, targets)["loss_ce"].item()

    assert loss(0.0) == pytest.approx(sum(terms), rel=FOCAL_REL)  # off: every unmatched query is no-object
    assert loss(0.01) == pytest.approx(sum(terms[:3]), rel=FOCAL_REL)  # CutLER's 0.01: query 3 dropped
    assert loss(0.3) == pytest.approx(sum(terms[:2]), rel=FOCAL_REL)  # the matched query always stays
    with pytest.raises(ValueError, match="drop_loss_iou must be in"):
        ObjectEmbeddingCriterion(1, HungarianMatcher(), {}, drop_loss_iou=1.0)


def test_per_target_weights_scale_each_matched_pairs_terms():
    """A target's ``weight`` multiplies its matched query's classification, L1, GIoU and embedding terms, against
    the per-pair terms computed without weights; unmatched queries keep weight 1 (DropLoss still drops them)."""
    from joindet.modeling.joindet import ObjectEmbeddingCriterion

    gen = torch.Generator().manual_seed(4)
    outputs, targets = _random_batch(gen, 2, 5, 1, [2, 1])
    outputs["pred_embed"] = torch.randn(2, 5, 3, generator=gen)
    for t in targets:
        t["labels"] = torch.zeros_like(t["labels"])
        t["embeddings"] = torch.randn(len(t["boxes"]), 3, generator=gen)
    indices = [([3, 0], [0, 1]), ([2], [0])]  # image 0: query 3 <- target 0, query 0 <- target 1
    weights = [torch.tensor([0.5, 0.0]), torch.tensor([0.25])]

    def crit(drop=0.0):
        return ObjectEmbeddingCriterion(1, FixedMatcher(indices), build_weight_dict(2, 5, 2, 0, False),
                                        focal_alpha=ALPHA, focal_gamma=GAMMA, drop_loss_iou=drop)

    plain = crit()(outputs, targets)
    weighted = crit()(outputs, [dict(t, weight=w) for t, w in zip(targets, weights)])
    ones = crit()(outputs, [dict(t, weight=torch.ones(len(w))) for t, w in zip(targets, weights)])
    for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_embed"):  # weight 1 everywhere is no weight
        torch.testing.assert_close(ones[k], plain[k], rtol=_sum_rtol(10), atol=0)

    # per-pair terms by themselves: each loss of the single pair (one matched query, one target)
    def single(b, q, j):
        out = {k: v[b:b + 1] for k, v in outputs.items()}
        tgt = [{k: v[j:j + 1] for k, v in targets[b].items()}]
        return ObjectEmbeddingCriterion(1, FixedMatcher([([q], [0])]), build_weight_dict(2, 5, 2, 0, False),
                                        focal_alpha=ALPHA, focal_gamma=GAMMA)(out, tgt)

    pairs = [(0, 3, 0, 0.5), (0, 0, 1, 0.0), (1, 2, 0, 0.25)]
    num_boxes = 3
    for k in ("loss_bbox", "loss_giou", "loss_embed"):
        want = sum(w * single(b, q, j)[k].item() for b, q, j, w in pairs) / num_boxes
        assert weighted[k].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    logits = outputs["pred_logits"][..., 0].tolist()
    matched = {(b, q): w for b, q, _, w in pairs}
    want_ce = sum(matched.get((b, q), 1.0) * _focal_by_hand(logits[b][q], 1.0 if (b, q) in matched else 0.0)
                  for b in range(2) for q in range(5)) / num_boxes
    assert weighted["loss_ce"].item() == pytest.approx(want_ce, rel=FOCAL_REL)
    # with DropLoss too: the weights stay on the matched queries, the dropped unmatched ones count 0
    dropped = crit(0.99)(outputs, [dict(t, weight=w) for t, w in zip(targets, weights)])
    want_drop = sum(w * _focal_by_hand(logits[b][q], 1.0) for (b, q), w in matched.items()) / num_boxes
    assert dropped["loss_ce"].item() == pytest.approx(want_drop, rel=FOCAL_REL)
