import numpy as np
import pytest
import torch

from joindet.priors.box_smooth import BoxSmoothSettings, mean_best_iou, smooth_priors, smooth_priors_batched

SQUARE = np.array([0.0, 0.0, 10.0, 10.0], dtype=np.float32)


def shifted(dx):
    """SQUARE shifted right by dx: IoU with SQUARE = (10 - dx) / (10 + dx)."""
    return SQUARE + np.array([dx, 0.0, dx, 0.0], dtype=np.float32)


def np_iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def reference_smooth(old_b, old_s, new_b, new_s, m, thr, topk):
    """Independent loop-based reference of the documented definition (float64): every participating
    precedent box seeds a cluster; a current box joins its best precedent box above ``thr``, else stays alone."""
    olds = [(np.float64(b), float(s)) for b, s in zip(old_b, old_s) if m * float(s) > 0]
    news = [(np.float64(b), float(s)) for b, s in zip(new_b, new_s) if (1 - m) * float(s) > 0]
    clusters = [{"old": o, "new": []} for o in olds]
    for b, s in news:
        ious = [np_iou(b, o[0]) for o in olds]
        if ious and max(ious) > thr:
            clusters[int(np.argmax(ious))]["new"].append((b, s))
        else:
            clusters.append({"old": None, "new": [(b, s)]})
    out = []
    for c in clusters:
        members = ([(c["old"][0], m * c["old"][1])] if c["old"] else []) + [(b, (1 - m) * s) for b, s in c["new"]]
        box = sum(w * b for b, w in members) / sum(w for _, w in members)
        score = m * (c["old"][1] if c["old"] else 0.0) + (1 - m) * (np.mean([s for _, s in c["new"]]) if c["new"] else 0.0)
        out.append((score, box))
    out.sort(key=lambda t: -t[0])
    out = out[:topk]
    return (
        np.array([b for _, b in out]).reshape(-1, 4),
        np.array([s for s, _ in out]),
    )


def random_priors(rng, n, size=100.0):
    xy = rng.uniform(0, size * 0.7, (n, 2))
    wh = rng.uniform(size * 0.1, size * 0.3, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0.05, 1.0, n).astype(np.float32)
    return boxes, scores


def sorted_rows(boxes, scores):
    arr = np.concatenate(
        [np.asarray(boxes, np.float64), np.asarray(scores, np.float64)[:, None]], 1
    )
    return arr[np.lexsort(arr.T[::-1])]


def disjoint_boxes(n, offset=0.0):
    """n boxes in a row, no overlap between any two."""
    return np.stack(
        [SQUARE + np.float32([20 * i + offset, 0, 20 * i + offset, 0]) for i in range(n)]
    )


def test_momentum_zero_returns_current_priors():
    rng = np.random.default_rng(0)
    new_b = disjoint_boxes(5)
    new_s = np.float32([0.3, 0.9, 0.5, 0.7, 0.1])
    old_b, old_s = random_priors(rng, 8)
    boxes, scores = smooth_priors(old_b, old_s, new_b, new_s, BoxSmoothSettings(momentum=0.0))
    order = np.argsort(-new_s)
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    np.testing.assert_array_equal(boxes, new_b[order])
    np.testing.assert_array_equal(scores, new_s[order])


def test_momentum_one_returns_precedent_priors():
    rng = np.random.default_rng(1)
    old_b = disjoint_boxes(4, offset=3.0)
    old_s = np.float32([0.2, 0.8, 0.6, 0.4])
    new_b, new_s = random_priors(rng, 8)
    boxes, scores = smooth_priors(old_b, old_s, new_b, new_s, BoxSmoothSettings(momentum=1.0))
    order = np.argsort(-old_s)
    np.testing.assert_array_equal(boxes, old_b[order])
    np.testing.assert_array_equal(scores, old_s[order])


def test_momentum_zero_keeps_overlapping_current_priors_apart():
    # Two current priors overlapping above the threshold are two priors: only precedent-current pairs cluster.
    a, b = SQUARE, shifted(1.0)  # IoU 9/11
    old_b, old_s = np.stack([shifted(40.0)]), np.float32([0.9])
    boxes, scores = smooth_priors(old_b, old_s, np.stack([a, b]), np.float32([0.6, 0.2]), BoxSmoothSettings(momentum=0.0))
    np.testing.assert_array_equal(boxes, np.stack([a, b]))
    np.testing.assert_array_equal(scores, np.float32([0.6, 0.2]))


def test_overlaps_within_one_set_survive():
    # two precedent boxes that overlap (IoU 9/11) and two current boxes that overlap: 4 clusters when the
    # sets are far apart; when the current pair sits on the precedent pair, each joins its best match
    m = 0.45
    old_b = np.stack([SQUARE, shifted(1.0)])
    old_s = np.float32([0.8, 0.7])
    far_b = np.stack([shifted(50.0), shifted(51.0)])
    new_s = np.float32([0.6, 0.5])
    boxes, scores = smooth_priors(old_b, old_s, far_b, new_s, BoxSmoothSettings(momentum=m))
    assert boxes.shape == (4, 4)
    np.testing.assert_allclose(np.sort(scores), np.sort([m * 0.8, m * 0.7, (1 - m) * 0.6, (1 - m) * 0.5]), rtol=1e-6)
    near_b = np.stack([shifted(0.2), shifted(1.1)])  # best matches: SQUARE and shifted(1.0)
    boxes, scores = smooth_priors(old_b, old_s, near_b, new_s, BoxSmoothSettings(momentum=m))
    assert boxes.shape == (2, 4)
    np.testing.assert_allclose(scores, [m * 0.8 + (1 - m) * 0.6, m * 0.7 + (1 - m) * 0.5], rtol=1e-6)


@pytest.mark.parametrize("dx,merged", [(3.6, False), (3.4, True)])
def test_threshold_effect(dx, merged):
    old_b, new_b = SQUARE[None], shifted(dx)[None]
    iou = np_iou(SQUARE, shifted(dx))
    assert (iou > 0.48) == merged and abs(iou - 0.48) < 0.015  # just above / just below
    m, s_old, s_new = 0.45, 0.8, 0.6
    boxes, scores = smooth_priors(old_b, np.float32([s_old]), new_b, np.float32([s_new]), BoxSmoothSettings(momentum=m))
    if merged:
        assert boxes.shape == (1, 4)
        w_old, w_new = m * s_old, (1 - m) * s_new
        expected = (w_old * SQUARE.astype(np.float64) + w_new * shifted(dx)) / (w_old + w_new)
        np.testing.assert_allclose(boxes[0], expected, rtol=1e-6)
        np.testing.assert_allclose(scores[0], m * s_old + (1 - m) * s_new, rtol=1e-6)
    else:
        assert boxes.shape == (2, 4)
        # each cluster is a singleton: its box, and its score weighted by its own side's share
        np.testing.assert_allclose(scores, [m * s_old, (1 - m) * s_new], rtol=1e-6)
        np.testing.assert_array_equal(boxes, np.stack([SQUARE, shifted(dx)]))


def test_threshold_argument_changes_merging():
    old_b, new_b = SQUARE[None], shifted(3.4)[None]  # IoU ~0.4925
    one = np.float32([0.5])
    assert smooth_priors(old_b, one, new_b, one, BoxSmoothSettings(iou_threshold=0.45))[0].shape[0] == 1
    assert smooth_priors(old_b, one, new_b, one, BoxSmoothSettings(iou_threshold=0.50))[0].shape[0] == 2


def test_cluster_score_averages_each_side():
    # one old box and two new boxes, all pairwise above 0.48 -> one cluster
    m = 0.3
    old_b = SQUARE[None]
    new_b = np.stack([shifted(0.5), shifted(1.0)])
    old_s = np.float32([0.9])
    new_s = np.float32([0.5, 0.7])
    boxes, scores = smooth_priors(old_b, old_s, new_b, new_s, BoxSmoothSettings(momentum=m))
    assert boxes.shape == (1, 4)
    np.testing.assert_allclose(scores[0], m * 0.9 + (1 - m) * (0.5 + 0.7) / 2, rtol=1e-6)
    w = np.array([m * 0.9, (1 - m) * 0.5, (1 - m) * 0.7])
    all_b = np.concatenate([old_b, new_b]).astype(np.float64)
    np.testing.assert_allclose(boxes[0], (w[:, None] * all_b).sum(0) / w.sum(), rtol=1e-6)


def test_current_box_joins_the_precedent_box_with_highest_iou():
    # x overlaps both precedent boxes above 0.3, s2 more (0.667 vs 0.43): it joins s2 only.
    s1, s2, x = SQUARE, shifted(6.0), shifted(4.0)
    m = 0.5
    boxes, scores = smooth_priors(np.stack([s1, s2]), np.float32([0.9, 0.8]), x[None], np.float32([0.5]),
                                  BoxSmoothSettings(momentum=m, iou_threshold=0.3))
    assert boxes.shape == (2, 4)
    np.testing.assert_allclose(boxes[0], (m * 0.8 * s2 + (1 - m) * 0.5 * x.astype(np.float64)) / (m * 1.3), rtol=1e-6)
    np.testing.assert_array_equal(boxes[1], s1)  # s1 alone, fading
    np.testing.assert_allclose(scores, [m * 0.8 + (1 - m) * 0.5, m * 0.9], rtol=1e-6)


@pytest.mark.parametrize("seed,m,thr", [(0, 0.45, 0.48), (1, 0.2, 0.35), (2, 0.7, 0.65)])
def test_matches_loop_reference(seed, m, thr):
    rng = np.random.default_rng(seed)
    old_b, old_s = random_priors(rng, 25)
    new_b, new_s = random_priors(rng, 30)
    boxes, scores = smooth_priors(
        old_b, old_s, new_b, new_s, BoxSmoothSettings(momentum=m, iou_threshold=thr, topk=100)
    )
    ref_b, ref_s = reference_smooth(old_b, old_s, new_b, new_s, m, thr, 100)
    assert boxes.shape == ref_b.shape
    np.testing.assert_allclose(boxes, ref_b, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5)
    # smoothing merged something, never below the precedent count, and the outputs are sorted
    assert 25 <= boxes.shape[0] < 55
    assert np.all(np.diff(scores) <= 0)


def test_topk():
    new_b = disjoint_boxes(10)
    new_s = np.linspace(0.1, 1.0, 10).astype(np.float32)
    boxes, scores = smooth_priors(np.zeros((0, 4)), np.zeros(0), new_b, new_s, BoxSmoothSettings(momentum=0.0, topk=3))
    assert boxes.shape == (3, 4)
    np.testing.assert_array_equal(boxes, new_b[[9, 8, 7]])
    rng = np.random.default_rng(3)
    old_b, old_s = random_priors(rng, 40)
    new_b, new_s = random_priors(rng, 40)
    boxes, scores = smooth_priors(old_b, old_s, new_b, new_s)
    assert boxes.shape[0] <= 30 and scores.shape[0] == boxes.shape[0]


def test_order_invariance():
    rng = np.random.default_rng(4)
    old_b, old_s = random_priors(rng, 20)
    new_b, new_s = random_priors(rng, 20)
    b1, s1 = smooth_priors(old_b, old_s, new_b, new_s, BoxSmoothSettings(topk=50))
    po, pn = rng.permutation(20), rng.permutation(20)
    b2, s2 = smooth_priors(old_b[po], old_s[po], new_b[pn], new_s[pn], BoxSmoothSettings(topk=50))
    np.testing.assert_allclose(sorted_rows(b1, s1), sorted_rows(b2, s2), rtol=1e-6, atol=1e-5)


def test_empty_inputs():
    m = 0.45
    b = disjoint_boxes(3)
    s = np.float32([0.5, 0.9, 0.2])
    empty_b, empty_s = np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
    order = np.argsort(-s)

    boxes, scores = smooth_priors(empty_b, empty_s, b, s, BoxSmoothSettings(momentum=m))
    np.testing.assert_array_equal(boxes, b[order])
    np.testing.assert_allclose(scores, (1 - m) * s[order], rtol=1e-6)

    boxes, scores = smooth_priors(b, s, empty_b, empty_s, BoxSmoothSettings(momentum=m))
    np.testing.assert_array_equal(boxes, b[order])
    np.testing.assert_allclose(scores, m * s[order], rtol=1e-6)

    boxes, scores = smooth_priors(empty_b, empty_s, empty_b, empty_s)
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    assert boxes.dtype == np.float32

    # m = 1 with no old priors: nothing takes part
    boxes, scores = smooth_priors(empty_b, empty_s, b, s, BoxSmoothSettings(momentum=1.0))
    assert boxes.shape == (0, 4)


def test_torch_in_torch_out():
    rng = np.random.default_rng(5)
    old_b, old_s = random_priors(rng, 10)
    new_b, new_s = random_priors(rng, 10)
    nb, ns = smooth_priors(old_b, old_s, new_b, new_s)
    tb, ts = smooth_priors(*(torch.from_numpy(x) for x in (old_b, old_s, new_b, new_s)))
    assert isinstance(tb, torch.Tensor) and tb.dtype == torch.float32 and ts.dtype == torch.float32
    np.testing.assert_array_equal(tb.numpy(), nb)
    np.testing.assert_array_equal(ts.numpy(), ns)


def test_zero_scores_take_no_part():
    boxes, scores = smooth_priors(
        SQUARE[None], np.float32([0.0]), shifted(1.0)[None], np.float32([0.5]), BoxSmoothSettings(momentum=0.5)
    )
    np.testing.assert_array_equal(boxes, shifted(1.0)[None])
    np.testing.assert_allclose(scores, [0.25])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(momentum=-0.1),
        dict(momentum=1.1),
        dict(iou_threshold=0.0),
        dict(iou_threshold=1.0),
        dict(topk=0),
    ],
)
def test_bad_hyperparameters(kwargs):
    b = disjoint_boxes(2)
    s = np.float32([0.5, 0.5])
    with pytest.raises(ValueError):
        smooth_priors(b, s, b, s, BoxSmoothSettings(**kwargs))


def test_bad_shapes():
    b = disjoint_boxes(3)
    s = np.float32([0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="disagree"):
        smooth_priors(b, s[:2], b, s)
    with pytest.raises(ValueError, match=r"\(k, 4\)"):
        smooth_priors(b, s, b[:, :3], s)
    with pytest.raises(ValueError, match="x2 >= x1"):
        smooth_priors(b[:, [2, 1, 0, 3]], s, b, s)


def test_mean_best_iou():
    a, b, c = SQUARE, shifted(5.0), shifted(30.0)
    assert mean_best_iou(a[None], np.stack([c, a])) == pytest.approx(1.0)
    # a -> best 1.0 (a), b -> best IoU(b, a) = 5 / 15
    assert mean_best_iou(np.stack([a, b]), a[None]) == pytest.approx((1.0 + 1 / 3) / 2)
    assert mean_best_iou(np.stack([a, b]), c[None]) == 0.0
    assert mean_best_iou(np.zeros((0, 4)), a[None]) == 0.0
    assert mean_best_iou(a[None], torch.zeros(0, 4)) == 0.0


def test_batched_equals_per_image_reference_with_empty_images():
    rng = np.random.default_rng(7)
    counts_old = [5, 0, 12, 3, 0, 30]
    counts_new = [0, 4, 15, 3, 0, 30]
    olds = [random_priors(rng, n) for n in counts_old]
    news = [random_priors(rng, n) for n in counts_new]
    cat = lambda parts, i: torch.as_tensor(np.concatenate([p[i] for p in parts]), dtype=torch.float64)  # noqa: E731
    boxes, scores, counts = smooth_priors_batched(
        cat(olds, 0), cat(olds, 1), torch.tensor(counts_old), cat(news, 0), cat(news, 1), torch.tensor(counts_new),
        BoxSmoothSettings(momentum=0.45, iou_threshold=0.48, topk=20), chunk_images=2)  # blocks of 2 images: chunk borders too
    starts = np.concatenate([[0], np.cumsum(counts.numpy())])
    for i, ((ob, os_), (nb, ns)) in enumerate(zip(olds, news)):
        ref_b, ref_s = reference_smooth(ob, os_, nb, ns, 0.45, 0.48, 20)
        got_b, got_s = boxes[starts[i]:starts[i + 1]].numpy(), scores[starts[i]:starts[i + 1]].numpy()
        assert got_b.shape == ref_b.shape, i
        np.testing.assert_allclose(got_b, ref_b, rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(got_s, ref_s, rtol=1e-6)
    assert counts[4] == 0 and counts[0] == 5 and counts[1] == 4  # an image of one set only keeps it


def test_batched_rejects_disagreeing_image_counts():
    empty = torch.zeros((0, 4), dtype=torch.float64)
    with pytest.raises(ValueError, match="number of images"):
        smooth_priors_batched(empty, empty[:, 0], torch.tensor([0, 0]), empty, empty[:, 0], torch.tensor([0]))


def test_version_arrays_chunked_equal_per_image_smoothing():
    from joindet.priors.box_smooth import smooth_version_arrays

    rng = np.random.default_rng(11)
    olds = [random_priors(rng, n) for n in (4, 0, 9, 30, 2)]
    news = [random_priors(rng, n) for n in (6, 3, 0, 25, 2)]

    def flat(parts):
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                np.concatenate([[0], np.cumsum([len(p[0]) for p in parts])]))

    results = [smooth_version_arrays(*flat(olds), *flat(news), BoxSmoothSettings(topk=12), chunk_images=c)
               for c in (1, 2, 100)]
    for boxes, scores, offsets in results[1:]:
        np.testing.assert_array_equal(boxes, results[0][0])
        np.testing.assert_array_equal(scores, results[0][1])
        np.testing.assert_array_equal(offsets, results[0][2])
    boxes, scores, offsets = results[0]
    for i, ((ob, os_), (nb, ns)) in enumerate(zip(olds, news)):
        want_b, want_s = smooth_priors(ob, os_, nb, ns, BoxSmoothSettings(topk=12))
        np.testing.assert_array_equal(boxes[offsets[i]:offsets[i + 1]], want_b)
        np.testing.assert_array_equal(scores[offsets[i]:offsets[i + 1]], want_s)
    with pytest.raises(ValueError, match="num_images"):
        smooth_version_arrays(*flat(olds), *flat(news[:3]))


def test_bank_benchmark_smoke(tmp_path):
    from joindet.benchmarks import bank

    (row,) = bank.main(["--sizes", "tiny", "--json", str(tmp_path / "bank.json")])
    assert row["images"] == 1000 and 1000 <= row["output_boxes"] <= 30_000 and row["total_s"] > 0
    assert (tmp_path / "bank.json").is_file()


# --------------------------------------------------------------------------- Soft-NMS (step 3b)
def reference_soft_nms(boxes, scores, sigma):
    """Loop reference of Gaussian Soft-NMS on one image (float64): take the best box not yet taken, decay
    every box not yet taken by exp(-IoU^2 / sigma), until all are taken."""
    scores = [float(s) for s in scores]
    todo = list(range(len(scores)))
    while todo:
        best = max(todo, key=lambda i: scores[i])
        todo.remove(best)
        for i in todo:
            scores[i] *= np.exp(-np_iou(np.float64(boxes[best]), np.float64(boxes[i])) ** 2 / sigma)
    return np.array(scores)


def test_soft_nms_by_hand():
    from joindet.priors.box_smooth import soft_nms_scores

    boxes = torch.tensor(np.stack([SQUARE, shifted(5.0), shifted(40.0)]), dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.3], dtype=torch.float64)
    got = soft_nms_scores(boxes, scores, torch.zeros(3, dtype=torch.long), 1, sigma=0.5)
    # box 1 overlaps box 0 with IoU 1/3: decayed once; box 2 overlaps nothing: unchanged
    np.testing.assert_allclose(got.numpy(), [0.9, 0.8 * np.exp(-(1 / 3) ** 2 / 0.5), 0.3], rtol=1e-12)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        soft_nms_scores(boxes, scores, torch.zeros(3, dtype=torch.long), 1, sigma=0.0)


def test_soft_nms_batched_equals_per_image_reference():
    from joindet.priors.box_smooth import soft_nms_scores

    rng = np.random.default_rng(3)
    counts = [6, 0, 1, 17, 30]
    parts = [random_priors(rng, n) for n in counts]
    boxes = torch.as_tensor(np.concatenate([p[0] for p in parts]), dtype=torch.float64)
    scores = torch.as_tensor(np.concatenate([p[1] for p in parts]), dtype=torch.float64)
    image = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    perm = torch.as_tensor(rng.permutation(len(image)))  # rows in any order
    got = torch.empty_like(scores)
    got[perm] = soft_nms_scores(boxes[perm], scores[perm], image[perm], len(counts), sigma=0.5, chunk_images=2)
    start = 0
    for (b, s), n in zip(parts, counts):
        np.testing.assert_allclose(got[start:start + n].numpy(), reference_soft_nms(b, s, 0.5), rtol=1e-9)
        start += n


def test_smoothing_with_soft_nms_keeps_the_boxes_and_reranks_duplicates():
    # the precedent set has two near-duplicates of one object and one other object; the current set
    # re-scores the same boxes (a rescore refresh): the duplicate falls below the other object
    old_b = np.stack([SQUARE, shifted(1.0), shifted(40.0)])
    old_s = np.float32([0.9, 0.85, 0.6])
    plain_b, plain_s = smooth_priors(old_b, old_s, old_b, old_s)
    snms_b, snms_s = smooth_priors(old_b, old_s, old_b, old_s, BoxSmoothSettings(soft_nms_sigma=0.5))
    assert sorted_rows(plain_b, np.zeros(3)).tolist() == sorted_rows(snms_b, np.zeros(3)).tolist()  # same boxes
    np.testing.assert_array_equal(plain_b[1], shifted(1.0))  # without: the duplicate ranks second
    np.testing.assert_array_equal(snms_b[1], shifted(40.0))  # with: the other object does
    iou = np_iou(SQUARE, shifted(1.0))
    np.testing.assert_allclose(snms_s, [0.9, 0.6, 0.85 * np.exp(-iou ** 2 / 0.5)], rtol=1e-6)
    with pytest.raises(ValueError, match="soft_nms_sigma"):
        smooth_priors(old_b, old_s, old_b, old_s, BoxSmoothSettings(soft_nms_sigma=-1.0))


def reference_replace(old_b, old_s, new_b, new_s, m, thr, topk, min_score):
    """Loop reference of the "replace" rule (CutLER's merge), float64: the current boxes scored at least
    ``min_score`` enter with their scores; a precedent box stays, at m x its score, where none of them overlaps it
    at IoU > ``thr``; the top K by score (ties: precedent first)."""
    news = [(np.float64(b), float(s)) for b, s in zip(new_b, new_s) if (1 - m) * float(s) > 0 and float(s) >= min_score]
    olds = [(np.float64(b), m * float(s)) for b, s in zip(old_b, old_s) if m * float(s) > 0
            and all(np_iou(b, nb) <= thr for nb, _ in news)]
    out = sorted(olds + news, key=lambda t: -t[1])[:topk]  # sorted() is stable: precedent first on ties
    return np.array([b for b, _ in out]).reshape(-1, 4), np.array([s for _, s in out])


@pytest.mark.parametrize("seed,m,thr,min_score", [(0, 0.45, 0.5, 0.0), (1, 0.2, 0.3, 0.5), (2, 0.9, 0.65, 0.7)])
def test_replace_rule_matches_loop_reference(seed, m, thr, min_score):
    rng = np.random.default_rng(seed)
    counts_old, counts_new = [25, 0, 8, 12], [30, 6, 0, 12]
    olds = [random_priors(rng, n) for n in counts_old]
    news = [random_priors(rng, n) for n in counts_new]
    settings = BoxSmoothSettings(momentum=m, iou_threshold=thr, topk=20, rule="replace", min_score=min_score)
    cat = lambda parts, i: torch.as_tensor(np.concatenate([p[i] for p in parts]), dtype=torch.float64)  # noqa: E731
    boxes, scores, counts = smooth_priors_batched(cat(olds, 0), cat(olds, 1), torch.tensor(counts_old),
                                                  cat(news, 0), cat(news, 1), torch.tensor(counts_new), settings,
                                                  chunk_images=3)  # a block border inside the batch
    starts = np.concatenate([[0], np.cumsum(counts.numpy())])
    for i, ((ob, os_), (nb, ns)) in enumerate(zip(olds, news)):
        ref_b, ref_s = reference_replace(ob, os_, nb, ns, m, thr, 20, min_score)
        got_b, got_s = boxes[starts[i]:starts[i + 1]].numpy(), scores[starts[i]:starts[i + 1]].numpy()
        assert got_b.shape == ref_b.shape, i
        np.testing.assert_allclose(got_b, ref_b, rtol=1e-12)  # boxes are copied, never averaged
        np.testing.assert_allclose(got_s, ref_s, rtol=1e-12)
    # the single-image entry point agrees with the batched one
    b0, s0 = smooth_priors(*olds[0], *news[0], settings)
    np.testing.assert_allclose(b0, boxes[:starts[1]].numpy().astype(np.float32))


def test_replace_rule_by_hand():
    """A current box overlapping a precedent one replaces it; a precedent box nothing overlaps stays at m x its
    score; a current box below min_score takes no part, so the precedent box it overlaps stays."""
    m = 0.5
    old_b = np.stack([SQUARE, shifted(40), shifted(80)])
    old_s = np.float32([1.0, 0.8, 0.6])
    new_b = np.stack([shifted(1), shifted(81)])  # IoU 9/11 with old 0, IoU 9/11 with old 2
    new_s = np.float32([0.9, 0.2])
    settings = BoxSmoothSettings(momentum=m, iou_threshold=0.5, topk=10, rule="replace", min_score=0.3)
    boxes, scores = smooth_priors(old_b, old_s, new_b, new_s, settings)
    np.testing.assert_array_equal(boxes, np.stack([shifted(1), shifted(40), shifted(80)]))
    np.testing.assert_allclose(scores, [0.9, m * 0.8, m * 0.6], rtol=1e-6)
    # the paper's rule averages the overlapping pair instead, and keeps the low-scored current box apart
    boxes, _ = smooth_priors(old_b, old_s, new_b, new_s, BoxSmoothSettings(momentum=m, iou_threshold=0.5, topk=10))
    assert not any(np.array_equal(b, shifted(1)) for b in boxes)


@pytest.mark.parametrize("kwargs,match", [({"rule": "cutler"}, "rule must be one of"),
                                          ({"min_score": -0.1}, "min_score must be >= 0")])
def test_bad_rule_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BoxSmoothSettings(**kwargs)


def test_min_score_leaves_the_paper_rule_unchanged_at_zero_and_filters_above():
    rng = np.random.default_rng(11)
    old_b, old_s = random_priors(rng, 20)
    new_b, new_s = random_priors(rng, 20)
    b0, s0 = smooth_priors(old_b, old_s, new_b, new_s, BoxSmoothSettings(topk=50))
    b1, s1 = smooth_priors(old_b, old_s, new_b, new_s, BoxSmoothSettings(topk=50, min_score=0.0))
    np.testing.assert_array_equal(b0, b1)
    keep = new_s >= 0.5
    b2, s2 = smooth_priors(old_b, old_s, new_b, new_s, BoxSmoothSettings(topk=50, min_score=0.5))
    ref_b, ref_s = reference_smooth(old_b, old_s, new_b[keep], new_s[keep], 0.45, 0.48, 50)
    np.testing.assert_allclose(b2, ref_b, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(s2, ref_s, rtol=1e-5)
