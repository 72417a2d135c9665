"""Tests of the plain-PyTorch multi-scale deformable attention."""

import math

import pytest
import torch

from joindet.modeling.deformable_attention import MSDeformAttn, ms_deform_attn_core

SHAPES = [(3, 5), (2, 3), (4, 2)]  # (H, W) per level, deliberately non-square and unequal


def _loop_reference(value, shapes, locations, weights):
    """Deformable attention by explicit loops and hand-written bilinear interpolation.

    Pixel (row i, column j) of a level has its centre at ((j + 0.5) / W, (i + 0.5) / H);
    neighbours outside the map contribute zero. Returns (N, Lq, M * D).
    """
    n, _, m, d = value.shape
    _, lq, _, n_levels, n_points, _ = locations.shape
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    rows = []
    for b in range(n):
        per_query = []
        for q in range(lq):
            per_head = []
            for head in range(m):
                acc = value.new_zeros(d)
                for lvl in range(n_levels):
                    h, w = shapes[lvl]
                    for p in range(n_points):
                        # continuous pixel coordinates, pixel centres on integers
                        x = locations[b, q, head, lvl, p, 0] * w - 0.5
                        y = locations[b, q, head, lvl, p, 1] * h - 0.5
                        x0 = math.floor(x.item())
                        y0 = math.floor(y.item())
                        fx = x - x0
                        fy = y - y0
                        sample = value.new_zeros(d)
                        for dy, wy in ((0, 1 - fy), (1, fy)):
                            for dx, wx in ((0, 1 - fx), (1, fx)):
                                col, row = x0 + dx, y0 + dy
                                if 0 <= col < w and 0 <= row < h:
                                    pix = value[b, starts[lvl] + row * w + col, head]
                                    sample = sample + wx * wy * pix
                        acc = acc + weights[b, q, head, lvl, p] * sample
                per_head.append(acc)
            per_query.append(torch.cat(per_head))
        rows.append(torch.stack(per_query))
    return torch.stack(rows)


def _locations_off_centres(gen, n, lq, m, shapes, n_points, low=-1, dtype=torch.float64):
    """Random normalised locations whose pixel coordinates are >= 0.1 away from any integer
    (pixel centre), including points that straddle or leave the map border."""
    locs = torch.empty(n, lq, m, len(shapes), n_points, 2, dtype=dtype)
    for lvl, (h, w) in enumerate(shapes):
        for axis, size in ((0, w), (1, h)):
            cell = torch.randint(low, size + 1, (n, lq, m, n_points), generator=gen)
            frac = 0.1 + 0.8 * torch.rand(n, lq, m, n_points, generator=gen, dtype=dtype)
            locs[:, :, :, lvl, :, axis] = (cell + 0.5 + frac) / size
    return locs


def _random_inputs(gen, n=2, lq=3, m=2, d=3, n_points=3, shapes=SHAPES):
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=gen, dtype=torch.float64)
    locs = _locations_off_centres(gen, n, lq, m, shapes, n_points, low=-2)
    # exact edges and far-outside points
    locs[0, 0, 0, :, 0] = torch.tensor([0.0, 0.0], dtype=torch.float64)
    locs[0, 0, 1, :, 0] = torch.tensor([1.0, 1.0], dtype=torch.float64)
    locs[0, 1, 0, :, 1] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    locs[1, 2, 1, :, 1] = torch.tensor([-0.7, 0.4], dtype=torch.float64)
    locs[1, 2, 0, :, 2] = torch.tensor([0.3, 1.9], dtype=torch.float64)
    logits = torch.randn(n, lq, m, len(shapes) * n_points, generator=gen, dtype=torch.float64)
    weights = logits.softmax(-1).view(n, lq, m, len(shapes), n_points)
    return value, locs, weights


def test_core_matches_loop_reference_values_and_grads():
    gen = torch.Generator().manual_seed(0)
    value, locs, weights = _random_inputs(gen)
    shapes_t = torch.tensor(SHAPES, dtype=torch.int64)

    inputs_a = [t.clone().requires_grad_(True) for t in (value, locs, weights)]
    inputs_b = [t.clone().requires_grad_(True) for t in (value, locs, weights)]
    out = ms_deform_attn_core(inputs_a[0], shapes_t, inputs_a[1], inputs_a[2])
    ref = _loop_reference(inputs_b[0], SHAPES, inputs_b[1], inputs_b[2])
    assert out.shape == (2, 3, 2 * 3)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # the far-outside point has zero contribution; the test must not be trivially zero
    assert ref.abs().max() > 0.1

    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads_a = torch.autograd.grad((out * upstream).sum(), inputs_a)
    grads_b = torch.autograd.grad((ref * upstream).sum(), inputs_b)
    for name, ga, gb in zip(("value", "locations", "weights"), grads_a, grads_b):
        torch.testing.assert_close(ga, gb, atol=1e-5, rtol=0, msg=f"gradient w.r.t. {name}")
        assert gb.abs().max() > 0, name


def test_core_hand_computed_single_point():
    # One level 2x2, one head, D=1, values [[1, 2], [3, 4]].
    value = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    shapes = torch.tensor([[2, 2]])
    weights = torch.ones(1, 1, 1, 1, 1)
    cases = {
        (0.25, 0.25): 1.0,  # centre of pixel (0, 0)
        (0.5, 0.5): 2.5,  # centre of the map: mean of all four
        (0.75, 0.25): 2.0,  # centre of pixel (row 0, col 1)
        (0.0, 0.25): 0.5,  # left edge: half of pixel (0, 0), half zero padding
        (1.0, 1.0): 1.0,  # bottom-right corner: a quarter of 4
        (1.5, 0.5): 0.0,  # outside
    }
    for (x, y), expected in cases.items():
        loc = torch.tensor([x, y]).view(1, 1, 1, 1, 1, 2)
        out = ms_deform_attn_core(value, shapes, loc, weights)
        assert out.item() == pytest.approx(expected, abs=1e-6), (x, y)


def test_core_gradcheck():
    gen = torch.Generator().manual_seed(1)
    shapes = [(2, 3), (1, 2)]
    n, lq, m, d, p = 1, 2, 2, 2, 2
    value = torch.randn(n, 8, m, d, generator=gen, dtype=torch.float64, requires_grad=True)
    locs = _locations_off_centres(gen, n, lq, m, shapes, p).requires_grad_(True)
    weights = torch.rand(n, lq, m, len(shapes), p, generator=gen, dtype=torch.float64)
    weights.requires_grad_(True)
    shapes_t = torch.tensor(shapes, dtype=torch.int64)
    assert torch.autograd.gradcheck(
        lambda v, l, w: ms_deform_attn_core(v, shapes_t, l, w), (value, locs, weights)
    )


def test_core_rejects_mismatched_shapes():
    value = torch.zeros(1, 10, 2, 4)
    locs = torch.zeros(1, 3, 2, 2, 4, 2)
    weights = torch.zeros(1, 3, 2, 2, 4)
    with pytest.raises(ValueError, match="S=10"):
        ms_deform_attn_core(value, torch.tensor([[2, 2], [2, 2]]), locs, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn_core(value, torch.tensor([[2, 3], [2, 2]]), locs, weights[..., :3])


def _module_inputs(gen, module, n, lq, shapes, ref_dim):
    s = sum(h * w for h, w in shapes)
    query = torch.randn(n, lq, module.d_model, generator=gen)
    src = torch.randn(n, s, module.d_model, generator=gen)
    if ref_dim == 2:
        ref = torch.rand(n, lq, len(shapes), 2, generator=gen)
    else:
        centre = torch.rand(n, lq, len(shapes), 2, generator=gen)
        size = 0.1 + 0.5 * torch.rand(n, lq, len(shapes), 2, generator=gen)
        ref = torch.cat([centre, size], dim=-1)
    shapes_t = torch.tensor(shapes, dtype=torch.int64)
    sizes = shapes_t.prod(1)
    start = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    return query, ref, src, shapes_t, start


def _ring_offsets(n_heads, n_levels, n_points):
    """(M, L, P, 2) initial offsets computed point by point."""
    out = torch.zeros(n_heads, n_levels, n_points, 2)
    for h in range(n_heads):
        cx, cy = math.cos(2 * math.pi * h / n_heads), math.sin(2 * math.pi * h / n_heads)
        peak = max(abs(cx), abs(cy))
        for lvl in range(n_levels):
            for k in range(n_points):
                out[h, lvl, k] = torch.tensor([cx / peak * (k + 1), cy / peak * (k + 1)])
    return out


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_output_shape(ref_dim):
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    module = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2)
    inputs = _module_inputs(gen, module, 2, 5, SHAPES, ref_dim)
    out = module(*inputs)
    assert out.shape == (2, 5, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_initial_forward_matches_explicit_locations(ref_dim):
    """At initialisation the offsets are the ring and the attention weights are uniform, so
    the module equals the core with locations computed here by hand."""
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    m, n_levels, p, c = 4, 3, 2, 16
    module = MSDeformAttn(d_model=c, n_levels=n_levels, n_heads=m, n_points=p).double()
    query, ref, src, shapes_t, start = _module_inputs(gen, module, 2, 4, SHAPES, ref_dim)
    query, ref, src = query.double(), ref.double(), src.double()
    ring = _ring_offsets(m, n_levels, p).double()

    n, lq = query.shape[:2]
    locs = torch.zeros(n, lq, m, n_levels, p, 2, dtype=torch.float64)
    for b in range(n):
        for q in range(lq):
            for h in range(m):
                for lvl, (hh, ww) in enumerate(SHAPES):
                    for k in range(p):
                        ox, oy = ring[h, lvl, k].tolist()
                        r = ref[b, q, lvl].tolist()
                        if ref_dim == 2:
                            locs[b, q, h, lvl, k] = torch.tensor(
                                [r[0] + ox / ww, r[1] + oy / hh], dtype=torch.float64
                            )
                        else:
                            locs[b, q, h, lvl, k] = torch.tensor(
                                [r[0] + ox / p * r[2] * 0.5, r[1] + oy / p * r[3] * 0.5],
                                dtype=torch.float64,
                            )
    weights = torch.full((n, lq, m, n_levels, p), 1.0 / (n_levels * p), dtype=torch.float64)
    value = module.value_proj(src).view(n, -1, m, c // m)
    expected = module.output_proj(ms_deform_attn_core(value, shapes_t, locs, weights))
    out = module(query, ref, src, shapes_t, start)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)


def test_module_initial_parameters_follow_ring():
    module = MSDeformAttn(d_model=32, n_levels=2, n_heads=8, n_points=3)
    bias = module.sampling_offsets.bias.detach().view(8, 2, 3, 2)
    torch.testing.assert_close(bias, _ring_offsets(8, 2, 3), atol=1e-6, rtol=0)
    # hand-computed first point of heads 0..3: angles 0, 45, 90, 135 degrees
    first = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 1.0]])
    torch.testing.assert_close(bias[:4, 0, 0], first, atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[:4, 1, 2], 3 * first, atol=1e-6, rtol=0)
    assert (module.sampling_offsets.weight == 0).all()
    assert (module.attention_weights.weight == 0).all()
    assert (module.attention_weights.bias == 0).all()
    assert (module.value_proj.bias == 0).all() and (module.output_proj.bias == 0).all()
    # xavier uniform bound for a 32x32 layer
    bound = math.sqrt(6.0 / (32 + 32))
    assert module.value_proj.weight.abs().max() <= bound
    assert module.value_proj.weight.std() > bound / 4


def test_module_padding_mask_hides_padded_values():
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    module = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=4)
    query, ref, src, shapes_t, start = _module_inputs(gen, module, 2, 6, SHAPES, 2)
    # pad the right-most column of every level, and in image 1 also the bottom row
    mask = torch.zeros(2, src.shape[1], dtype=torch.bool)
    for lvl, (h, w) in enumerate(SHAPES):
        grid = torch.zeros(h, w, dtype=torch.bool)
        grid[:, -1] = True
        mask[0, start[lvl] : start[lvl] + h * w] = grid.flatten()
        grid[-1, :] = True
        mask[1, start[lvl] : start[lvl] + h * w] = grid.flatten()
    altered = src.clone()
    altered[mask] = 100.0 * torch.randn(int(mask.sum()), 16, generator=gen)

    with torch.no_grad():
        out = module(query, ref, src, shapes_t, start, mask)
        out_altered = module(query, ref, altered, shapes_t, start, mask)
        out_unmasked = module(query, ref, altered, shapes_t, start)
    torch.testing.assert_close(out, out_altered, atol=1e-6, rtol=0)
    # without the mask the padded values do reach the output (the test has teeth)
    assert (out_unmasked - out).abs().max() > 1e-2


def test_module_rejects_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(d_model=30, n_heads=8)
    gen = torch.Generator().manual_seed(5)
    module = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2)
    query, ref, src, shapes_t, start = _module_inputs(gen, module, 1, 2, SHAPES, 2)
    bad_ref = torch.rand(1, 2, 3, 3)
    with pytest.raises(ValueError, match="reference_points"):
        module(query, bad_ref, src, shapes_t, start)
    with pytest.raises(ValueError, match="S="):
        module(query, ref, src[:, :-1], shapes_t, start)
    with pytest.raises(ValueError, match="input_level_start_index"):
        module(query, ref, src, shapes_t, start + 1)
