"""Tests of the NCut object priors (joindet/priors/ncut.py)."""
import numpy as np
import pytest
import scipy.linalg
import torch

from joindet.priors.ncut import (
    RelativeTau,
    _adjacency,
    affinity_matrix,
    border_of_valid,
    components_to_boxes,
    eigen_attention_map,
    fix_sign,
    masks_from_map,
    priors_from_features,
)


def _orthonormal(n, c, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(c, n, generator=g, dtype=torch.float64))
    return q.T  # (n, c) orthonormal rows


def _scene(h, w, squares, c=32, seed=0, noise=0.05):
    """(h, w, c) noise around a background vector; each square (i0, j0, i1, j1, k) gets vector k."""
    g = torch.Generator().manual_seed(seed + 100)
    vecs = _orthonormal(4, c, seed)
    f = vecs[0] + noise * torch.randn(h, w, c, generator=g, dtype=torch.float64)
    for i0, j0, i1, j1, k in squares:
        f[i0:i1, j0:j1] = vecs[k] + noise * torch.randn(i1 - i0, j1 - j0, c, generator=g,
                                                        dtype=torch.float64)
    return f


def _reference_laplacian(f, tau, eps):
    """numpy reference of Eq. 1: (L = D - U, D) for one image's (N, c) features."""
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    U = np.where(f @ f.T >= tau, 1.0, eps)
    D = np.diag(U.sum(1))
    return D - U, D, U


def test_affinity_matches_reference():
    f = torch.randn(2, 10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    U = affinity_matrix(f, tau=0.1, eps=1e-3)
    for b in range(2):
        _, _, ref = _reference_laplacian(f[b].numpy(), 0.1, 1e-3)
        np.testing.assert_array_equal(U[b].numpy(), ref)
    valid = torch.tensor([[True] * 6 + [False] * 4, [True] * 10])
    Uv = affinity_matrix(f, tau=0.1, eps=1e-3, valid=valid)
    assert (Uv[0, 6:] == 0).all() and (Uv[0, :, 6:] == 0).all()
    np.testing.assert_array_equal(Uv[0, :6, :6].numpy(), U[0, :6, :6].numpy())


def test_eigenvector_matches_scipy_generalised():
    B, h, w, c, tau, eps = 3, 6, 7, 16, 0.2, 1e-5
    feats = torch.randn(B, h, w, c, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    M = eigen_attention_map(feats, tau=tau, eps=eps)
    assert M.shape == (B, h, w) and M.dtype == torch.float64
    for b in range(B):
        L, D, _ = _reference_laplacian(feats[b].reshape(-1, c).numpy(), tau, eps)
        vals, vecs = scipy.linalg.eigh(L, D)
        assert vals[2] - vals[1] > 1e-6, "test needs a non-degenerate second eigenvalue"
        ref = vecs[:, 1]
        y = M[b].reshape(-1).numpy()
        cos = abs(y @ ref) / (np.linalg.norm(y) * np.linalg.norm(ref))
        assert cos > 0.999
        # The map itself solves (D - U) y = lambda D y with lambda = lambda_1, y^T D 1 = 0.
        lam = (y @ L @ y) / (y @ D @ y)
        assert lam == pytest.approx(vals[1], rel=1e-8)
        resid = np.linalg.norm(L @ y - lam * D @ y) / np.linalg.norm(D @ y)
        assert resid < 1e-8
        assert abs(y @ D @ np.ones_like(y)) < 1e-8 * np.linalg.norm(D @ y)
        assert y @ D @ y == pytest.approx(1.0, rel=1e-8)


def test_padding_does_not_change_real_nodes():
    g = torch.Generator().manual_seed(3)
    small = torch.randn(5, 6, 16, dtype=torch.float64, generator=g)
    alone = eigen_attention_map(small[None])[0]
    padded = torch.randn(2, 8, 9, 16, dtype=torch.float64, generator=g)  # garbage in the padding
    padded[0, :5, :6] = small
    valid = torch.zeros(2, 8, 9, dtype=torch.bool)
    valid[0, :5, :6] = True
    valid[1, :7, :9] = True
    M = eigen_attention_map(padded, valid_mask=valid)
    torch.testing.assert_close(M[0, :5, :6], alone, atol=1e-10, rtol=1e-8)
    assert (M[0][~valid[0]] == 0).all() and (M[1][~valid[1]] == 0).all()
    torch.testing.assert_close(M[1, :7], eigen_attention_map(padded[1:2, :7])[0], atol=1e-10, rtol=1e-8)


def test_planted_square_gives_its_box():
    # 5x5 square at rows 4..8, cols 6..10 of a 16x16 grid; 128x128 image => 8 px patches.
    f = _scene(16, 16, [(4, 6, 9, 11, 1)])
    expected = np.array([6 * 8, 4 * 8, 11 * 8, 9 * 8], np.float32)
    for feats in (f, f.float()):
        boxes, scores = priors_from_features(feats[None], [(128, 128)])[0]
        assert boxes.dtype == np.float32 and scores.dtype == np.float32
        np.testing.assert_allclose(boxes[0], expected)
        assert scores[0] == pytest.approx(scores.max())
    fg = masks_from_map(eigen_attention_map(f[None]))[0]
    square = torch.zeros(16, 16, dtype=torch.bool)
    square[4:9, 6:11] = True
    assert torch.equal(fg, square)


def test_non_square_image_coordinates():
    # 16 rows x 16 cols of patches on a 96 (H) x 160 (W) image: patch = 6 px tall, 10 px wide.
    f = _scene(16, 16, [(4, 6, 9, 11, 1)])
    boxes, _ = priors_from_features(f[None], [(96, 160)])[0]
    np.testing.assert_allclose(boxes[0], [60, 24, 110, 54])


def test_rounds_find_a_second_object():
    # Square 1 (3 patches wide) has only eps edges; square 2's left column is a bridge of features
    # halfway between it and the background (cosine 0.71 with both). Round 1 cuts square 1 alone;
    # with it removed, round 2 separates square 2 (bridge included) from the background; round 3
    # sees a uniform background and finds nothing.
    f = _scene(16, 16, [(2, 2, 6, 6, 1), (8, 8, 14, 14, 2)], noise=0.01)
    v = _orthonormal(4, 32, 0)
    f[8:14, 8] = (v[0] + v[2]) / 2**0.5
    first, second = (16.0, 16.0, 48.0, 48.0), (64.0, 64.0, 112.0, 112.0)
    per_rounds = [priors_from_features(f[None], [(128, 128)], num_rounds=k)[0] for k in (1, 2, 3)]
    assert [tuple(b) for b in per_rounds[0][0].tolist()] == [first]
    for boxes, _ in per_rounds[1:]:
        assert sorted(map(tuple, boxes.tolist())) == [first, second]


def test_components_of_one_foreground():
    # Two squares with the same vector: one foreground, two components, plus their union box.
    f = _scene(16, 16, [(2, 2, 5, 5, 1), (10, 9, 13, 12, 1)])
    boxes, scores = priors_from_features(f[None], [(160, 160)], num_rounds=1)[0]
    got = sorted(map(tuple, boxes.tolist()))
    assert got == sorted([(20.0, 20.0, 50.0, 50.0), (90.0, 100.0, 120.0, 130.0),
                          (20.0, 20.0, 120.0, 130.0)])
    assert np.all(np.diff(scores) <= 0)


def test_padded_batch_equals_single_images():
    a = _scene(16, 16, [(4, 6, 9, 11, 1)], seed=0)
    b = _scene(10, 12, [(3, 4, 6, 8, 2)], seed=1)
    batch = torch.randn(2, 16, 16, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    batch[0] = a
    batch[1, :10, :12] = b
    valid = torch.zeros(2, 16, 16, dtype=torch.bool)
    valid[0] = True
    valid[1, :10, :12] = True
    sizes = [(128, 128), (100, 120)]
    together = priors_from_features(batch, sizes, valid_mask=valid)
    for feats, size, (boxes, scores) in zip((a, b), sizes, together):
        alone_boxes, alone_scores = priors_from_features(feats[None], [size])[0]
        np.testing.assert_allclose(boxes, alone_boxes, atol=1e-4)
        np.testing.assert_allclose(scores, alone_scores, atol=1e-5)
    np.testing.assert_allclose(together[1][0][0], [40, 30, 80, 60])  # 10 px patches


def test_sign_rule_invariances():
    f = _scene(16, 16, [(4, 6, 9, 11, 1)], seed=4)
    M = eigen_attention_map(f[None])
    torch.testing.assert_close(eigen_attention_map(-f[None]), M)
    perm = torch.randperm(f.shape[-1], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(eigen_attention_map(f[None][..., perm]), M, atol=1e-12, rtol=1e-9)
    # fix_sign depends on the eigenvector only up to sign.
    y = torch.randn(4, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    valid = torch.ones(4, 20, dtype=torch.bool)
    border = torch.zeros(4, 20, dtype=torch.bool)
    border[:, :6] = True
    torch.testing.assert_close(fix_sign(y, valid, border), fix_sign(-y, valid, border))


def test_fix_sign_hand_values():
    valid = torch.ones(1, 5, dtype=torch.bool)
    no_border = torch.zeros(1, 5, dtype=torch.bool)
    # mean 0; the largest |y| (-4) is on the low side => negated so the seed is on top.
    y = torch.tensor([[-4.0, 1.0, 1.0, 1.0, 1.0]])
    assert fix_sign(y, valid, no_border).tolist() == [[4.0, -1.0, -1.0, -1.0, -1.0]]
    assert fix_sign(-y, valid, no_border).tolist() == [[4.0, -1.0, -1.0, -1.0, -1.0]]
    # Border nodes 1..4 are 4 of 5 border nodes; after the seed rule node 0 alone is foreground:
    # not most of the border => kept. With border = {0, 1}, half (not most) => kept too.
    border = torch.tensor([[False, True, True, True, True]])
    assert fix_sign(y, valid, border).tolist() == [[4.0, -1.0, -1.0, -1.0, -1.0]]
    # Seed side covering most of the border (nodes 0, 1 of border {0, 1, 2}) => flipped.
    y2 = torch.tensor([[5.0, 2.0, -3.0, -2.0, -2.0]])
    border2 = torch.tensor([[True, True, True, False, False]])
    assert fix_sign(y2, valid, border2).tolist() == [[-5.0, -2.0, 3.0, 2.0, 2.0]]
    # Invalid nodes are ignored by the mean, the seed and the border count.
    valid3 = torch.tensor([[True, True, True, True, False]])
    y3 = torch.tensor([[-3.0, 1.0, 1.0, 1.0, 0.0]])
    assert fix_sign(y3, valid3, no_border).tolist() == [[3.0, -1.0, -1.0, -1.0, 0.0]]


def test_border_rule_picks_the_inner_region():
    # A 12x12 region inside a 2-patch ring: the ring is the smaller set, so it holds the largest
    # |y1|; it fills the whole border, so the border rule makes the inner region the foreground.
    f = _scene(16, 16, [(2, 2, 14, 14, 1)])
    inner = torch.zeros(16, 16, dtype=torch.bool)
    inner[2:14, 2:14] = True
    no_border = torch.zeros(1, 16, 16, dtype=torch.bool)
    assert torch.equal(masks_from_map(eigen_attention_map(f[None], border_mask=no_border))[0], ~inner)
    assert torch.equal(masks_from_map(eigen_attention_map(f[None]))[0], inner)
    boxes, _ = priors_from_features(f[None], [(128, 128)])[0]
    np.testing.assert_allclose(boxes[0], [16, 16, 112, 112])


def test_uniform_features_give_no_boxes():
    f = torch.ones(2, 8, 8, 16)
    f[1] = 0.0  # zero vectors: cosine 0 everywhere, all affinities eps
    M = eigen_attention_map(f)
    assert (M == 0).all()
    assert not masks_from_map(M).any()
    for boxes, scores in priors_from_features(f, [(64, 64), (64, 64)]):
        assert boxes.shape == (0, 4) and scores.shape == (0,)
        assert boxes.dtype == np.float32 and scores.dtype == np.float32


def test_random_features_topk_and_bounds():
    g = torch.Generator().manual_seed(7)
    feats = torch.randn(2, 12, 12, 16, generator=g)
    sizes = [(90, 70), (33, 47)]
    for topk in (3, 30):
        for (boxes, scores), (H, W) in zip(priors_from_features(feats, sizes, topk=topk), sizes):
            assert 1 <= len(boxes) <= topk and boxes.shape == (len(scores), 4)
            assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= W).all()
            assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= H).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert np.all(np.diff(scores) <= 0) and np.all(np.abs(scores) <= 1 + 1e-6)


def test_components_to_boxes_hand_values():
    fg = np.zeros((4, 5), bool)
    fg[0, 0] = fg[1, 1] = True  # diagonal neighbours: one 8-connected component
    fg[3, 3:5] = True
    score = np.arange(20, dtype=np.float64).reshape(4, 5) / 19
    boxes, scores = components_to_boxes(fg, score, (40, 100), (4, 5))
    np.testing.assert_allclose(boxes, [[0, 0, 40, 20], [60, 30, 100, 40], [0, 0, 100, 40]])
    np.testing.assert_allclose(scores, [(0 + 6) / 2 / 19, (18 + 19) / 2 / 19, (0 + 6 + 18 + 19) / 4 / 19],
                               rtol=1e-6)
    boxes, scores = components_to_boxes(fg, score, (40, 100), (4, 5), min_patches=3)
    np.testing.assert_allclose(boxes, [[0, 0, 100, 40]])
    assert components_to_boxes(np.zeros((4, 5), bool), score, (40, 100), (4, 5))[0].shape == (0, 4)


def test_border_of_valid():
    valid = torch.zeros(1, 4, 5, dtype=torch.bool)
    valid[0, :3, :4] = True
    expected = valid.clone()
    expected[0, 1, 1:3] = False
    assert torch.equal(border_of_valid(valid), expected)


def test_bad_arguments():
    f = torch.randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="tau"):
        eigen_attention_map(f, tau=1.5)
    with pytest.raises(ValueError, match="eps"):
        eigen_attention_map(f, eps=0.0)
    with pytest.raises(ValueError, match="ndim"):
        eigen_attention_map(f[0])
    with pytest.raises(ValueError, match="valid_mask"):
        eigen_attention_map(f, valid_mask=torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="floating"):
        eigen_attention_map(f.long())
    with pytest.raises(ValueError, match="image_sizes"):
        priors_from_features(f, [(32, 32), (32, 32)])
    with pytest.raises(ValueError, match="topk"):
        priors_from_features(f, [(32, 32)], topk=0)
    with pytest.raises(ValueError, match="num_rounds"):
        priors_from_features(f, [(32, 32)], num_rounds=0)
    with pytest.raises(ValueError, match="nms_threshold"):
        priors_from_features(f, [(32, 32)], nms_threshold=1.5)
    holed = torch.ones(1, 4, 4, dtype=torch.bool)
    holed[0, 1, 1] = False
    with pytest.raises(ValueError, match="top-left rectangle"):
        priors_from_features(f, [(32, 32)], valid_mask=holed)


# ----------------------------------------------------------------------------- partial (Lanczos) solver
def _aligned_corr(a, b):
    """|cosine| of two maps per image (eigenvectors are defined up to sign)."""
    return torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1).abs()


def _assert_same_foreground(dense, partial, valid=None):
    """``masks_from_map`` (``M > mean M``) of the two solvers' sign-fixed maps agree on every patch whose dense
    value is farther from the dense mean than the solvers can disagree there: twice their largest pointwise
    difference delta (each value and the mean move by at most delta), plus the rounding of each solver's float32
    mean of n values (log2(n) ulps of the largest each). Closer to the threshold, the float32 Lanczos map -- within its
    convergence tolerance of the float64 one, not equal to it, and rounded differently by every CPU's kernels --
    may put a patch on either side. delta itself must stay small: a wrong sign or eigenvector fails here."""
    valid = torch.ones_like(dense, dtype=torch.bool) if valid is None else valid
    d64, p64 = dense.double(), partial.double()
    scale = torch.where(valid, d64.abs(), torch.zeros_like(d64)).amax((1, 2))  # (B,)
    delta = torch.where(valid, (d64 - p64).abs(), torch.zeros_like(d64)).amax((1, 2))
    assert (delta <= 1e-3 * scale).all(), (delta, scale)
    n = valid.sum((1, 2))
    mean = (d64 * valid).sum((1, 2)) / n.clamp(min=1)
    rounding = torch.log2(n.double().clamp(min=2)) * torch.finfo(dense.dtype).eps * scale
    band = (2 * delta + 2 * rounding)[:, None, None]
    decided = valid & ((d64 - mean[:, None, None]).abs() > band)
    assert decided.sum() >= 0.95 * valid.sum()  # the band holds only the few patches next to the threshold
    fg_dense, fg_partial = masks_from_map(dense, valid), masks_from_map(partial, valid)
    assert torch.equal(fg_dense[decided], fg_partial[decided])


@pytest.mark.parametrize("tau", [0.2, 0.5])
def test_lanczos_map_matches_the_dense_reference(tau):
    # 24 x 24 patches (576 nodes, above LANCZOS_MIN_NODES: the partial solver runs), two images, noisy scenes
    scenes = [_scene(24, 24, [(3, 4, 12, 14, 1), (15, 15, 22, 23, 2)], seed=s, noise=0.4) for s in (1, 2)]
    f = torch.stack(scenes).float()
    dense = eigen_attention_map(f, tau=tau, solver="dense")
    partial = eigen_attention_map(f, tau=tau, solver="lanczos")
    assert (_aligned_corr(dense, partial) >= 0.99).all()
    _assert_same_foreground(dense, partial)


def test_lanczos_handles_detached_nodes_like_the_dense_solver():
    # padding (valid top-left block) and removed patches inside the valid block
    f = torch.stack([_scene(24, 24, [(2, 2, 10, 12, 1)], seed=3, noise=0.3),
                     _scene(24, 24, [(12, 3, 20, 20, 2)], seed=4, noise=0.3)]).float()
    valid = torch.zeros(2, 24, 24, dtype=torch.bool)
    valid[0, :20, :22] = True
    valid[1] = True
    valid[1, 14:18, 5:9] = False  # already found in an earlier round
    dense = eigen_attention_map(f, valid_mask=valid, solver="dense")
    partial = eigen_attention_map(f, valid_mask=valid, solver="lanczos")
    assert (_aligned_corr(dense, partial) >= 0.99).all()
    _assert_same_foreground(dense, partial, valid)
    assert (partial[~valid] == 0).all()


def test_lanczos_falls_back_to_float64_where_it_does_not_converge(monkeypatch):
    import joindet.priors.ncut as ncut

    f = torch.stack([_scene(16, 16, [(3, 3, 9, 9, 1)], seed=5, noise=0.5)]).float()
    monkeypatch.setattr(ncut, "LANCZOS_MIN_NODES", 2)
    calls = []
    real = ncut._lanczos_second

    def never_converges(adjacency, eps, valid, counts):
        y, ok = real(adjacency, eps, valid, counts, steps=2, restarts=0)
        calls.append(ok)
        return y, torch.zeros_like(ok)

    monkeypatch.setattr(ncut, "_lanczos_second", never_converges)
    fallback = eigen_attention_map(f, solver="lanczos")
    assert calls  # the partial solver ran, and its result was replaced by the dense one
    torch.testing.assert_close(fallback, eigen_attention_map(f, solver="dense"))


def test_priors_with_either_solver_agree():
    # Boxes come from each round's foreground M > mean M, so a patch next to that threshold decides a box edge.
    # These scenes (seeds 17, 30) have every patch >= 1e-3 x max|M| from the mean in every round with either
    # solver -- thousands of float32 ulps, so no CPU's rounding of the float32 Lanczos map moves one across --
    # and the two solvers' foregrounds agree; seeds 6, 7 had a patch at 2e-5 x max|M|, as close as the
    # solvers' own difference there.
    f = torch.stack([_scene(24, 24, [(3, 4, 12, 14, 1), (15, 15, 22, 23, 2)], seed=s, noise=0.3)
                     for s in (17, 30)]).float()
    dense = priors_from_features(f, [(192, 192)] * 2, solver="dense")
    partial = priors_from_features(f, [(192, 192)] * 2, solver="lanczos")
    for (bd, sd), (bp, sp) in zip(dense, partial):
        # the same boxes with scores within 1e-3; two boxes whose scores differ by less than that may
        # come out in either order, so compare them sorted by their coordinates
        order_d, order_p = np.lexsort(bd.T[::-1]), np.lexsort(bp.T[::-1])
        np.testing.assert_allclose(bd[order_d], bp[order_p], atol=1e-3)
        np.testing.assert_allclose(sd[order_d], sp[order_p], atol=1e-3)
    with pytest.raises(ValueError, match="solver"):
        priors_from_features(f, [(192, 192)] * 2, solver="arpack")


def test_ncut_benchmark_smoke(tmp_path):
    from joindet.benchmarks import ncut as bench

    rows = bench.main(["--num-images", "1", "--grids", "4", "--device", "cpu", "--json", str(tmp_path / "b.json")])
    assert len(rows) == 1 and rows[0]["grid"] == "4x4" and rows[0]["ncut_dense_ms"] is not None
    assert rows[0]["ss_over_lanczos"] > 0 and (tmp_path / "b.json").is_file()
    assert set(bench.COLUMNS) <= set(rows[0]) and rows[0]["device"] == "cpu"
    assert all(rows[0][k] > 0 for k in ("selective_search_ms", "encoder_ms", "ncut_lanczos_ms",
                                        "ncut_lanczos_batched_ms", "ncut_dense_ms"))
    assert not set(bench.CUDA_COLUMNS) & set(rows[0])  # the GPU memory columns only on CUDA


def test_a_uniform_remaining_block_has_no_structure_though_the_whole_graph_has():
    # two clusters of identical features; once one is removed, every remaining pair is similar
    f = torch.zeros(1, 16, 16, 8)
    f[..., 0] = 1.0
    f[:, :, 8:, 0] = 0.0
    f[:, :, 8:, 1] = 1.0
    whole = eigen_attention_map(f, solver="lanczos")
    assert whole.abs().max() > 0
    assert torch.equal(masks_from_map(whole)[0, :, 8:], torch.ones(16, 8, dtype=torch.bool)) or \
        torch.equal(masks_from_map(whole)[0, :, :8], torch.ones(16, 8, dtype=torch.bool))
    left = torch.zeros(1, 16, 16, dtype=torch.bool)
    left[:, :, :8] = True
    for solver in ("lanczos", "dense"):
        assert (eigen_attention_map(f, valid_mask=left, solver=solver) == 0).all()


def test_relative_tau_is_each_images_quantile_of_its_valid_pairs():
    """RelativeTau's thresholds against numpy's quantile of each image's distinct valid pairs (padding left
    out), and the adjacency it gives against the absolute threshold of each image, outside a band of
    rounding around the threshold."""
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 12, 8, generator=g, dtype=torch.float64)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 9:] = False  # the second image's last 3 nodes are padding
    rel = RelativeTau(0.3, valid)
    adjacency = _adjacency(feats, rel, torch.float64)
    f = torch.nn.functional.normalize(feats, dim=-1)
    gram = (f @ f.transpose(1, 2)).numpy()
    for b in range(2):
        idx = valid[b].nonzero().squeeze(1).numpy()
        pairs = gram[b][np.ix_(idx, idx)][~np.eye(len(idx), dtype=bool)]
        tau_b = np.quantile(pairs, 0.3)
        assert rel.thresholds(torch.from_numpy(gram))[b].item() == pytest.approx(tau_b, abs=1e-12)
        expected = gram[b] >= tau_b
        away = np.abs(gram[b] - tau_b) > 1e-9
        np.testing.assert_array_equal(adjacency[b].numpy().astype(bool)[away], expected[away])
        # about 1 - quantile of the distinct valid pairs are edges
        edges = adjacency[b].numpy().astype(bool)[np.ix_(idx, idx)][~np.eye(len(idx), dtype=bool)]
        assert abs(edges.mean() - 0.7) <= 2.0 / len(pairs)
    with pytest.raises(ValueError, match="tau_quantile must lie in \\(0, 1\\)"):
        RelativeTau(1.0, valid)


def test_linear_quantile_equals_torch_quantile_and_has_no_size_limit():
    """The order-statistic quantile of RelativeTau against torch.quantile, and on more values than
    torch.quantile accepts (2**24: an image of more than 4096 patches)."""
    from joindet.priors.ncut import _linear_quantile

    g = torch.Generator().manual_seed(5)
    for n in (2, 3, 17, 1000):
        values = torch.randn(n, generator=g, dtype=torch.float64)
        for q in (0.1, 0.3, 0.5, 0.9):
            assert _linear_quantile(values, q).item() == pytest.approx(torch.quantile(values, q).item(), abs=1e-12)
    big = torch.arange(2 ** 24 + 2, dtype=torch.float64)  # 0, 1, ..., 2**24 + 1: the median is 2**23 + 0.5
    assert _linear_quantile(big, 0.5).item() == 2 ** 23 + 0.5


def test_relative_tau_finds_the_object_where_a_shared_component_collapses_the_graph():
    """Every patch shares a large component (as encoder outputs do): every cosine exceeds 0.98, the absolute
    tau's graph is complete and NCut finds nothing; the image's own median finds the planted square."""
    f = _scene(16, 16, [(4, 6, 9, 11, 1)])
    shared = _orthonormal(5, 32, 9)[4]  # orthogonal to the scene's vectors
    collapsed = 0.3 * f + 3.0 * shared
    square = np.array([6 * 8, 4 * 8, 11 * 8, 9 * 8], np.float32)
    for feats, solver in ((collapsed, "dense"), (collapsed.float(), "lanczos")):
        boxes, _ = priors_from_features(feats[None], [(128, 128)], solver=solver)[0]
        assert len(boxes) == 0
        boxes, scores = priors_from_features(feats[None], [(128, 128)], solver=solver, tau_quantile=0.5)[0]
        np.testing.assert_allclose(boxes[0], square)
        assert scores[0] == scores.max()
