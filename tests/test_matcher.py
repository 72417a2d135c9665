"""HungarianMatcher against a brute-force search over all assignments, with an independently
computed cost matrix."""

import itertools
import math

import pytest
import torch

from joindet.modeling.matcher import HungarianMatcher

ALPHA, GAMMA = 0.25, 2.0
W_CLASS, W_BBOX, W_GIOU = 2.0, 5.0, 2.0
MIN_SIDE = 0.05  # the smallest box side _random_boxes draws


def _giou_cxcywh(a, b):
    """GIoU of two (cx, cy, w, h) boxes given as Python floats."""
    ax1, ay1, ax2, ay2 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx1, by1, bx2, by2 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax2, bx2) - min(ax1, bx1)) * (max(ay2, by2) - min(ay1, by1))
    return inter / union - (hull - union) / hull


def _reference_cost(logits, boxes, labels, tboxes):
    """(Q, n) list of lists: the matching cost written out pair by pair."""
    cost = []
    for q in range(len(logits)):
        row = []
        for j in range(len(labels)):
            p = 1.0 / (1.0 + math.exp(-float(logits[q][labels[j]])))
            neg = (1 - ALPHA) * p**GAMMA * -math.log(1 - p + 1e-8)
            pos = ALPHA * (1 - p) ** GAMMA * -math.log(p + 1e-8)
            l1 = sum(abs(float(boxes[q][k]) - float(tboxes[j][k])) for k in range(4))
            giou = _giou_cxcywh([float(x) for x in boxes[q]], [float(x) for x in tboxes[j]])
            row.append(W_CLASS * (pos - neg) + W_BBOX * l1 - W_GIOU * giou)
        cost.append(row)
    return cost


def _brute_force_min(cost, num_queries, num_targets):
    """Minimum total cost over all one-to-one assignments of min(Q, n) pairs."""
    best = math.inf
    if num_targets <= num_queries:
        for queries in itertools.permutations(range(num_queries), num_targets):
            best = min(best, sum(cost[q][j] for j, q in enumerate(queries)))
    else:
        for tgts in itertools.permutations(range(num_targets), num_queries):
            best = min(best, sum(cost[q][j] for q, j in enumerate(tgts)))
    return best


def _random_boxes(gen, n):
    centre = torch.rand(n, 2, generator=gen) * 0.6 + 0.2
    size = torch.rand(n, 2, generator=gen) * 0.3 + 0.05
    return torch.cat([centre, size], dim=1)


def _cost_tolerance(logits, labels):
    """(Q, n) bound on the float32 cost matrix's distance from the float64 reference, 8 float32 ulps of each
    term's sensitivity: the class term is at most ~(1 + |x|) in size, and reads p = sigmoid(x) (a few ulps off in
    any SIMD kernel) through -log(1 - p), which multiplies p's relative error by p / (1 - p) = exp(x) -- the
    float32 cost of a confident logit is this far from the exact one on every machine; the L1 term sums 4
    differences of coordinates <= 1 (8 roundings); the GIoU term divides areas of sides >= MIN_SIDE built from
    coordinates <= 1, relative error ~1 / MIN_SIDE ulps."""
    x = logits[:, labels].double()  # (Q, n)
    sensitivity = W_CLASS * (1 + x.abs()) * (1 + x.exp()) + W_BBOX * 8 + W_GIOU / MIN_SIDE
    return 8 * torch.finfo(torch.float32).eps * sensitivity


def _case(gen, num_queries, num_targets, num_classes=3):
    logits = torch.randn(1, num_queries, num_classes, generator=gen) * 2
    boxes = _random_boxes(gen, num_queries)[None]
    labels = torch.randint(0, num_classes, (num_targets,), generator=gen)
    return {"pred_logits": logits, "pred_boxes": boxes}, [
        {"labels": labels, "boxes": _random_boxes(gen, num_targets)}
    ]


@pytest.mark.parametrize("seed", range(12))
def test_hungarian_equals_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    num_queries = int(torch.randint(1, 6, (1,), generator=gen))
    num_targets = int(torch.randint(1, 4, (1,), generator=gen))
    outputs, targets = _case(gen, num_queries, num_targets)
    matcher = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU, ALPHA, GAMMA)

    ((pred_idx, tgt_idx),) = matcher(outputs, targets)
    cost = _reference_cost(
        outputs["pred_logits"][0].tolist(),
        outputs["pred_boxes"][0].tolist(),
        targets[0]["labels"].tolist(),
        targets[0]["boxes"].tolist(),
    )

    assert pred_idx.dtype == torch.int64 and tgt_idx.dtype == torch.int64
    assert pred_idx.device.type == "cpu"
    assert len(pred_idx) == len(tgt_idx) == min(num_queries, num_targets)
    assert torch.equal(pred_idx, pred_idx.sort().values)
    assert len(set(pred_idx.tolist())) == len(pred_idx) and len(set(tgt_idx.tolist())) == len(
        tgt_idx
    )
    total = sum(cost[q][j] for q, j in zip(pred_idx.tolist(), tgt_idx.tolist()))
    assert total == pytest.approx(_brute_force_min(cost, num_queries, num_targets), abs=1e-5)


def test_cost_matrix_matches_formula():
    gen = torch.Generator().manual_seed(100)
    outputs, targets = _case(gen, 5, 3)
    matcher = HungarianMatcher(W_CLASS, W_BBOX, W_GIOU, ALPHA, GAMMA)
    got = matcher.cost_matrix(
        outputs["pred_logits"][0],
        outputs["pred_boxes"][0],
        targets[0]["labels"],
        targets[0]["boxes"],
    )
    want = torch.tensor(
        _reference_cost(
            outputs["pred_logits"][0].tolist(),
            outputs["pred_boxes"][0].tolist(),
            targets[0]["labels"].tolist(),
            targets[0]["boxes"].tolist(),
        ),
        dtype=torch.float64,
    )
    assert got.shape == (5, 3) and got.dtype == torch.float32
    tolerance = _cost_tolerance(outputs["pred_logits"][0], targets[0]["labels"])
    assert ((got.double() - want).abs() <= tolerance).all(), (got.double() - want).abs() / tolerance


def test_obvious_assignment():
    """Each target has an exact copy among the queries: the matcher must find it."""
    tboxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])
    pboxes = torch.tensor(
        [[0.5, 0.5, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2], [0.9, 0.9, 0.1, 0.1], [0.2, 0.2, 0.1, 0.1]]
    )
    logits = torch.zeros(1, 4, 2)
    ((pred_idx, tgt_idx),) = HungarianMatcher()(
        {"pred_logits": logits, "pred_boxes": pboxes[None]},
        [{"labels": torch.tensor([0, 1]), "boxes": tboxes}],
    )
    assert pred_idx.tolist() == [1, 3] and tgt_idx.tolist() == [1, 0]


def test_batch_with_empty_image_matches_images_alone():
    gen = torch.Generator().manual_seed(7)
    out_a, tgt_a = _case(gen, 4, 3)
    out_b, tgt_b = _case(gen, 4, 2)
    empty = {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}
    batch = {k: torch.cat([out_a[k], out_a[k], out_b[k]]) for k in out_a}
    matcher = HungarianMatcher()
    got = matcher(batch, [tgt_a[0], empty, tgt_b[0]])
    assert len(got) == 3
    for (p, t), (p_ref, t_ref) in zip(
        [got[0], got[2]], [matcher(out_a, tgt_a)[0], matcher(out_b, tgt_b)[0]]
    ):
        assert torch.equal(p, p_ref) and torch.equal(t, t_ref)
    assert got[1][0].numel() == 0 and got[1][1].numel() == 0
    assert got[1][0].dtype == torch.int64 and got[1][1].dtype == torch.int64

    all_empty = matcher({k: v[:2] for k, v in batch.items()}, [empty, empty])
    assert [(p.numel(), t.numel()) for p, t in all_empty] == [(0, 0), (0, 0)]


def test_more_targets_than_queries():
    gen = torch.Generator().manual_seed(3)
    outputs, targets = _case(gen, 2, 3)
    ((pred_idx, tgt_idx),) = HungarianMatcher()(outputs, targets)
    assert pred_idx.tolist() == [0, 1] and len(set(tgt_idx.tolist())) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        HungarianMatcher(0, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        HungarianMatcher(cost_class=-1.0)
    outputs = {"pred_logits": torch.zeros(1, 3, 2), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    with pytest.raises(ValueError, match="labels"):
        HungarianMatcher()(
            outputs, [{"labels": torch.tensor([2]), "boxes": torch.full((1, 4), 0.5)}]
        )
    with pytest.raises(ValueError, match="targets for a batch"):
        HungarianMatcher()(outputs, [])
    with pytest.raises(ValueError, match="boxes"):
        HungarianMatcher()(
            outputs, [{"labels": torch.tensor([1]), "boxes": torch.full((2, 4), 0.5)}]
        )
