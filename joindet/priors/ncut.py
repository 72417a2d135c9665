"""Object priors from the eigen attention map (Normalized Cut on encoder patch features).

Supplement section 4 / docs/design.md, "Eigen attention map":

1. affinity ``U_ij = 1 if cos(f_i, f_j) >= tau else eps`` over the patches of one image (Eq. 1);
2. the second-smallest generalised eigenvector ``y1`` of ``(D - U) y = lambda D y`` (Eq. 4), solved
   through the symmetric normalised Laplacian ``L_sym = I - D^-1/2 U D^-1/2``: if
   ``L_sym z = lambda z`` then ``y = D^-1/2 z`` (the supplement writes ``z = D^-1/2 y``; the
   substitution that makes Eq. 4 into Eq. 5 is ``z = D^1/2 y``). Only that one eigenvector is
   computed: batched Lanczos iterations in float32 on the features' device, stopped as soon as the
   Ritz residual is small (``solver="lanczos"``, the default), with a float64 ``eigh`` of the valid
   nodes where it does not converge and for small graphs; ``solver="dense"``, one batched float64
   ``torch.linalg.eigh`` of the whole padded graph, is the reference. The affinity is kept as its
   0/1 thresholded adjacency (the ``eps`` part is rank one and applied to vectors), computed once per
   batch and shared by every round;
3. a sign fix so that the foreground (the side of the bipartition holding the largest ``|y1|``) is
   the part above the mean, unless most border patches would then be foreground;
4. connected components of the foreground, one box each plus the box of the whole foreground,
   further rounds with the found patches removed from the graph (as in MaskCut), NMS, top K.

Images of different sizes share one padded batch: ``valid_mask`` marks the real patches, which must
form the top-left ``h_b x w_b`` rectangle of the padded grid (Detectron2's ``ImageList`` padding).
Padded (or removed) nodes are detached from the graph: their rows and columns of ``L_sym`` are zero
except the diagonal, which holds ``_DETACHED_EIGENVALUE`` = 3. ``L_sym`` of any graph with
non-negative weights has its spectrum in [0, 2], so the detached nodes' eigenvalues sort after all
real ones and the real block's eigenvectors are exactly those of the unpadded graph. (A zero row
with degree 1 would give eigenvalue 1, which a real ``lambda_1`` can exceed; a self-loop would give
eigenvalue 0, colliding with the trivial eigenvector.)
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage
from torchvision.ops import nms

__all__ = [
    "affinity_matrix",
    "RelativeTau",
    "second_eigenvector",
    "border_of_valid",
    "fix_sign",
    "eigen_attention_map",
    "masks_from_map",
    "components_to_boxes",
    "priors_from_features",
]

_DETACHED_EIGENVALUE = 3.0
_EIGH_DTYPE = torch.float64
SOLVERS = ("lanczos", "dense")  # JOINDET.NCUT.SOLVER
LANCZOS_STEPS = 40  # Krylov dimension of one Lanczos run
LANCZOS_RESTARTS = 2  # restarts from the Ritz vector before the dense fallback
LANCZOS_TOL = 1e-4  # Ritz residual |A z - theta z| (z of unit norm) below which a graph has converged
LANCZOS_MIN_NODES = 128  # smaller graphs go to the dense solver (as fast there, and exact)
LANCZOS_MIN_STEPS = 6  # Lanczos steps before the first convergence check
LANCZOS_CHECK_EVERY = 2  # steps between the (free) convergence checks of a run


def _check_graph_args(features: torch.Tensor, tau: float, eps: float,
                      valid_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Validate the eigen-map arguments; return the valid mask (B, h, w) bool on the features' device."""
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        ndim = features.ndim if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a (B, h, w, c) tensor, got ndim={ndim}")
    if not features.is_floating_point():
        raise ValueError(f"features must be a floating-point tensor, got {features.dtype}")
    if not -1.0 <= float(tau) <= 1.0:
        raise ValueError(f"tau is a cosine threshold and must lie in [-1, 1], got {tau}")
    if not float(eps) > 0.0:
        raise ValueError(f"eps must be > 0 (it keeps the graph connected), got {eps}")
    B, h, w, _ = features.shape
    if valid_mask is None:
        return torch.ones((B, h, w), dtype=torch.bool, device=features.device)
    if not isinstance(valid_mask, torch.Tensor) or tuple(valid_mask.shape) != (B, h, w):
        shape = tuple(valid_mask.shape) if isinstance(valid_mask, torch.Tensor) else type(valid_mask).__name__
        raise ValueError(f"valid_mask must be a (B, h, w) = {(B, h, w)} tensor, got {shape}")
    if valid_mask.dtype != torch.bool:
        raise ValueError(f"valid_mask must be a bool tensor, got {valid_mask.dtype}")
    return valid_mask.to(features.device)


def affinity_matrix(features: torch.Tensor, tau: float = 0.2, eps: float = 1e-5,
                    valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Thresholded cosine affinity (supplement Eq. 1), batched -- the materialised reference.

    Args:
        features: (B, N, c) float patch features.
        tau: cosine threshold; pairs with ``cos >= tau`` get weight 1, the others ``eps``.
        eps: weight of dissimilar pairs (> 0, keeps each image's graph connected).
        valid: optional (B, N) bool, False for padded or removed nodes.

    Returns:
        U: (B, N, N) float64; rows and columns of invalid nodes are 0. Zero feature vectors have
        cosine 0 with every node (themselves included).
    """
    U = _affinity(_adjacency(features, tau, _EIGH_DTYPE), eps)
    if valid is not None:
        U = U * (valid[:, :, None] & valid[:, None, :])
    return U


def _adjacency(features: torch.Tensor, tau, dtype: torch.dtype) -> torch.Tensor:
    """(B, N, N) in ``dtype``: 1 where ``cos(f_i, f_j) >= tau``, else 0 (all node pairs, before masking).
    ``tau``: one threshold, or a :class:`RelativeTau` (each image's own, from its cosines).

    The solvers work on this 0/1 matrix: the affinity is ``U = eps + (1 - eps) * adjacency``, and its
    constant ``eps`` part is a rank-one term applied to vectors in O(N) (``U x = (1 - eps) adj x +
    eps sum(x)``), so no N x N temporary beyond the Gram matrix (thresholded in place) is ever made.
    """
    f = torch.nn.functional.normalize(features.to(dtype), dim=-1)
    gram = f @ f.transpose(1, 2)
    if isinstance(tau, RelativeTau):
        tau = tau.thresholds(gram)[:, None, None]
    return gram.ge_(tau)


class RelativeTau:
    """A threshold relative to each image's own cosines: ``tau_b`` = the ``quantile`` of the cosines of
    image b's pairs of distinct valid patches, so that about ``1 - quantile`` of its pairs are edges whatever
    the scale of its similarities. An absolute ``tau`` fails where every patch of an image shares a large
    component (encoder outputs on cluttered scenes): every cosine exceeds it, the graph is complete, and NCut
    finds no structure. ``valid``: (B, N) bool, the patches that count."""

    def __init__(self, quantile: float, valid: torch.Tensor):
        if isinstance(quantile, bool) or not 0.0 < float(quantile) < 1.0:
            raise ValueError(f"tau_quantile must lie in (0, 1) (0 = the absolute tau), got {quantile!r}")
        self.quantile, self.valid = float(quantile), valid

    def thresholds(self, gram: torch.Tensor) -> torch.Tensor:
        """(B,) thresholds from the (B, N, N) cosines ``gram``; an image with fewer than two valid patches
        gets +inf (no edge)."""
        valid = self.valid.to(gram.device)
        out = torch.full((gram.shape[0],), float("inf"), dtype=gram.dtype, device=gram.device)
        for b in range(gram.shape[0]):
            idx = valid[b].nonzero().squeeze(1)
            if len(idx) < 2:
                continue
            pairs = gram[b][idx][:, idx]
            off_diagonal = ~torch.eye(len(idx), dtype=torch.bool, device=gram.device)
            out[b] = _linear_quantile(pairs[off_diagonal], self.quantile)
        return out


def _linear_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q)`` (linear interpolation between the two nearest order statistics) by
    ``kthvalue``, which has no size limit: ``torch.quantile`` refuses more than 2**24 values, i.e. an image of
    more than 4096 patches."""
    pos = q * (values.numel() - 1)
    lo = int(pos)
    below = values.kthvalue(lo + 1).values
    above = values.kthvalue(min(lo + 2, values.numel())).values
    return torch.lerp(below, above, torch.tensor(pos - lo, dtype=values.dtype, device=values.device))


def _affinity(adjacency: torch.Tensor, eps: float) -> torch.Tensor:
    """The affinity U (1 or eps per pair, exactly) of a 0/1 adjacency."""
    return torch.where(adjacency > 0, adjacency.new_tensor(1.0), adjacency.new_tensor(eps))


def _similar_counts(adjacency: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, N): for each node, the number of valid nodes it is similar to (exact integers in float)."""
    return torch.bmm(adjacency, valid.to(adjacency.dtype)[:, :, None])[..., 0]


def _has_structure(counts: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) bool: at least two valid nodes and not all affinities between valid nodes equal.

    The valid block of a two-valued affinity is constant iff every valid node is similar to all ``n``
    valid nodes or every one to none of them: read off :func:`_similar_counts` (one product with the
    adjacency, which also gives the degrees).
    """
    n = valid.sum(-1).to(counts.dtype)
    full = ((counts == n[:, None]) | ~valid).all(-1)
    empty = ((counts == 0) | ~valid).all(-1)
    return (n >= 2) & ~full & ~empty


def _dense_second(U: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The reference solver: one batched float64 ``eigh`` of L_sym; returns y1 (B, N) float64."""
    U = U.to(_EIGH_DTYPE) * (valid[:, :, None] & valid[:, None, :])
    deg = U.sum(-1)
    deg = torch.where(valid, deg, torch.ones_like(deg))
    inv_sqrt = deg.rsqrt()
    L = -(inv_sqrt[:, :, None] * U * inv_sqrt[:, None, :])
    diag = torch.where(valid, torch.ones_like(deg), torch.full_like(deg, _DETACHED_EIGENVALUE))
    L = L + torch.diag_embed(diag)
    _, vecs = torch.linalg.eigh(L)
    return vecs[:, :, 1] * inv_sqrt * valid


def _dense_second_compact(adjacency: torch.Tensor, eps: float, valid: torch.Tensor) -> torch.Tensor:
    """:func:`_dense_second` on each graph's valid nodes only (its cost is cubic in the nodes it is given:
    a small graph padded to a large grid, or a late round's few remaining nodes, must not pay for the
    detached ones); the same result."""
    y = torch.zeros(adjacency.shape[:2], dtype=_EIGH_DTYPE, device=adjacency.device)
    for b in range(adjacency.shape[0]):
        idx = valid[b].nonzero()[:, 0]
        sub = _affinity(adjacency[b][idx][:, idx].to(_EIGH_DTYPE), eps)[None]
        y[b, idx] = _dense_second(sub, torch.ones_like(idx, dtype=torch.bool)[None])[0]
    return y


def _lanczos_second(adjacency: torch.Tensor, eps: float, valid: torch.Tensor, counts: torch.Tensor,
                    steps: int = LANCZOS_STEPS, restarts: int = LANCZOS_RESTARTS, tol: float = LANCZOS_TOL):
    """Partial solver: the second eigenvector by batched Lanczos iterations in float32.

    Works on the normalised affinity ``A = D^-1/2 U D^-1/2`` of the valid nodes (its largest eigenvalue
    is 1, with the trivial eigenvector ``z0 = D^1/2 1``): Lanczos with full re-orthogonalisation, kept
    orthogonal to ``z0``, finds the largest eigenvalue of ``A`` on the complement, i.e. the second-smallest
    of ``L_sym = I - A``; restarted from its Ritz vector up to ``restarts`` times. Neither ``A`` nor ``U``
    is formed: each step is one product with the 0/1 ``adjacency`` for the whole batch, the ``eps`` term,
    the masking of invalid nodes and the degree scaling applied to the vectors, so one unmasked adjacency
    serves every NCut round. ``counts``: :func:`_similar_counts` of the valid nodes (gives the degrees).

    A run stops early: every ``LANCZOS_CHECK_EVERY`` steps (from ``LANCZOS_MIN_STEPS``) the small
    tridiagonal matrix is solved and the Ritz residual is read off it for free
    (``|beta_j s_j|``, the last component of the Ritz vector times the last off-diagonal); once it is below
    ``tol / 2`` for every graph, no more products are made. The final residual is then computed
    explicitly (one more product).

    Returns (y1 (B, N) float32 scaled so that ``y1^T D y1 = 1``, converged (B,) bool): a graph converged
    when the Ritz residual ``|A z - theta z|`` is below ``tol``.
    """
    B, N, _ = adjacency.shape
    adjacency = adjacency.to(torch.float32)
    vf = valid.to(torch.float32)
    n = vf.sum(-1, keepdim=True)
    deg = ((1.0 - eps) * counts.to(torch.float32) + eps * n) * vf
    inv_sqrt = torch.where(valid, deg.clamp(min=1e-30).rsqrt(), torch.zeros_like(deg))

    def apply_a(x):  # (B, N) -> A x
        y = inv_sqrt * x
        u_y = (1.0 - eps) * torch.bmm(adjacency, y[:, :, None])[..., 0] + eps * y.sum(-1, keepdim=True)
        return inv_sqrt * u_y

    def ritz(alpha, beta, k):  # top Ritz pair of the first k steps: values (B,), vectors (B, k), residuals (B,)
        off = beta[:, :k - 1].double()
        T = torch.diag_embed(alpha[:, :k].double()) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, S = torch.linalg.eigh(T)
        return theta[:, -1], S[:, :, -1], (beta[:, k - 1].double() * S[:, -1, -1]).abs()

    z0 = deg.clamp(min=0).sqrt()
    z0 = z0 / z0.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    m = max(2, min(int(steps), N - 1))
    # deterministic start: a fixed pseudo-random pattern over the nodes (the global RNG is not touched)
    idx = torch.arange(N, device=adjacency.device, dtype=torch.float32)
    z = (torch.sin(idx * 12.9898 + 1.0) * 43758.5453).frac()[None] * vf
    converged = torch.zeros(B, dtype=torch.bool, device=adjacency.device)
    for _ in range(int(restarts) + 1):
        Q = adjacency.new_zeros((B, m + 1, N))
        alpha = adjacency.new_zeros((B, m))
        beta = adjacency.new_zeros((B, m))
        v = z - (z * z0).sum(-1, keepdim=True) * z0
        Q[:, 0] = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-30)
        k = m
        for j in range(m):
            w = apply_a(Q[:, j])
            alpha[:, j] = (w * Q[:, j]).sum(-1)
            for _ in range(2):  # full re-orthogonalisation, twice (float32)
                w = w - (w * z0).sum(-1, keepdim=True) * z0
                w = w - torch.einsum("bk,bkn->bn", torch.einsum("bkn,bn->bk", Q[:, :j + 1], w), Q[:, :j + 1])
            beta[:, j] = w.norm(dim=-1)
            Q[:, j + 1] = w / beta[:, j, None].clamp(min=1e-30)
            if j + 1 < m and j + 1 >= LANCZOS_MIN_STEPS and (j + 1) % LANCZOS_CHECK_EVERY == 0:
                if bool((ritz(alpha, beta, j + 1)[2] < tol / 2).all()):
                    k = j + 1
                    break
        theta, s, _ = ritz(alpha, beta, k)
        z = torch.einsum("bk,bkn->bn", s.to(torch.float32), Q[:, :k])  # the largest Ritz value's vector
        z = z / z.norm(dim=-1, keepdim=True).clamp(min=1e-30)
        converged = (apply_a(z) - theta[:, None].to(torch.float32) * z).norm(dim=-1) < tol
        if bool(converged.all()):
            break
    return z * inv_sqrt, converged


def _rows(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``t[mask]`` without the copy (of N x N per graph) when the mask selects every graph."""
    return t if bool(mask.all()) else t[mask]


def second_eigenvector(adjacency: torch.Tensor, valid: torch.Tensor, eps: float = 1e-5,
                       solver: str = "lanczos") -> torch.Tensor:
    """Second-smallest generalised eigenvector of ``(D - U) y = lambda D y`` per graph,
    ``U = eps + (1 - eps) * adjacency``.

    ``solver="dense"``: one batched ``torch.linalg.eigh`` on ``L_sym = I - D^-1/2 U D^-1/2`` (float64),
    then ``y1 = D^-1/2 z1`` -- the reference. ``solver="lanczos"`` (default): the partial solver of
    :func:`_lanczos_second` in float32; graphs it does not converge on, or with fewer than
    ``LANCZOS_MIN_NODES`` valid nodes, are solved by the dense path (float64) on their valid nodes.
    Invalid nodes are detached (see the module docstring).

    Args:
        adjacency: (B, N, N) symmetric 0/1 (:func:`_adjacency`); its rows and columns at invalid nodes
            are ignored, so one unmasked adjacency serves every round.
        valid: (B, N) bool.
        eps: affinity of the pairs with adjacency 0 (> 0).
        solver: "lanczos" or "dense".

    Returns:
        y1: (B, N) float64, zero at invalid nodes, scaled so that ``y1^T D y1 = 1`` (sign arbitrary). All
        zero for a graph with fewer than two valid nodes or whose valid affinities are all equal (every
        partition is then equally good: the graph carries no structure, so there is no foreground).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    counts = _similar_counts(adjacency, valid)
    structure = _has_structure(counts, valid)
    if solver == "dense":
        y = _dense_second(_affinity(adjacency, eps), valid)
    else:
        y = torch.zeros(adjacency.shape[:2], dtype=_EIGH_DTYPE, device=adjacency.device)
        partial = structure & (valid.sum(-1) >= LANCZOS_MIN_NODES)
        if bool(partial.any()):
            y_p, ok = _lanczos_second(_rows(adjacency, partial), eps, valid[partial], counts[partial])
            y[partial] = y_p.to(_EIGH_DTYPE)
            partial[partial.clone()] = ok
        rest = structure & ~partial
        if bool(rest.any()):  # small graphs, and the float64 fallback where Lanczos did not converge
            y[rest] = _dense_second_compact(_rows(adjacency, rest), eps, valid[rest])
    return y * structure[:, None]


def border_of_valid(valid_mask: torch.Tensor) -> torch.Tensor:
    """Border patches of each image's valid region.

    Args:
        valid_mask: (B, h, w) bool.

    Returns:
        (B, h, w) bool: valid patches lying in the first or last row or column of the bounding
        box of that image's valid patches (all False for an image with no valid patch).
    """
    B, h, w = valid_mask.shape
    dev = valid_mask.device
    rows_any, cols_any = valid_mask.any(2), valid_mask.any(1)
    rows = torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev)
    r0 = rows_any.int().argmax(1)
    r1 = h - 1 - rows_any.flip(1).int().argmax(1)
    c0 = cols_any.int().argmax(1)
    c1 = w - 1 - cols_any.flip(1).int().argmax(1)
    on_row = (rows[None] == r0[:, None]) | (rows[None] == r1[:, None])  # (B, h)
    on_col = (cols[None] == c0[:, None]) | (cols[None] == c1[:, None])  # (B, w)
    return valid_mask & (on_row[:, :, None] | on_col[:, None, :])


def fix_sign(y: torch.Tensor, valid: torch.Tensor, border: torch.Tensor) -> torch.Tensor:
    """Orient eigenvectors so that ``y > mean`` is the foreground (docs/design.md, "Eigen attention map", step 4).

    The rule, per graph, with means taken over valid nodes only:

    1. the seed is the valid node with the largest ``|y|``; the foreground is the side of the
       bipartition ``{y > mean(y)}`` / ``{y <= mean(y)}`` that holds the seed. If the seed lies on
       the ``y <= mean`` side, ``y`` is negated, so the foreground becomes ``{y > mean}`` (the seed
       is then positive and holds the largest value);
    2. if more than half of the valid border patches are then foreground (``y > mean``), ``y`` is
       negated once more (the object is the part that does not fill the border).

    The result depends only on ``y`` up to sign (eigensolvers return either sign). An all-zero
    ``y`` stays zero.

    Args:
        y: (B, N) eigenvectors, zero at invalid nodes.
        valid: (B, N) bool.
        border: (B, N) bool border nodes (only valid ones count).

    Returns:
        (B, N) oriented eigenvectors, same dtype.
    """
    n_valid = valid.sum(-1).clamp(min=1)
    mean = (y * valid).sum(-1) / n_valid
    seed = torch.where(valid, y.abs(), torch.full_like(y, -1.0)).argmax(-1)
    seed_val = y.gather(1, seed[:, None])[:, 0]
    flip = seed_val <= mean
    y = torch.where(flip[:, None], -y, y)
    mean = torch.where(flip, -mean, mean)

    border = border & valid
    fg_border = ((y > mean[:, None]) & border).sum(-1)
    flip_border = 2 * fg_border > border.sum(-1)
    return torch.where(flip_border[:, None], -y, y)


def _eigen_attention_map64(features, tau, eps, valid_mask, border_mask, solver="lanczos", graph=None):
    """float64 map (B, h, w) and the valid mask used; see :func:`eigen_attention_map`. ``graph``: the
    unmasked adjacency of :func:`_adjacency` when the caller already has it (the same in every NCut round)."""
    valid_mask = _check_graph_args(features, tau, eps, valid_mask)
    B, h, w, c = features.shape
    if border_mask is None:
        border_mask = border_of_valid(valid_mask)
    elif tuple(border_mask.shape) != (B, h, w) or border_mask.dtype != torch.bool:
        raise ValueError(f"border_mask must be a (B, h, w) = {(B, h, w)} bool tensor, "
                         f"got {tuple(border_mask.shape)} {border_mask.dtype}")
    valid = valid_mask.reshape(B, h * w)
    if graph is None:
        graph = _adjacency(features.reshape(B, h * w, c), tau, _graph_dtype(solver))
    y = second_eigenvector(graph, valid, eps, solver)  # ignores the invalid nodes itself
    y = fix_sign(y, valid, border_mask.to(valid.device).reshape(B, h * w))
    return y.reshape(B, h, w), valid_mask


def _graph_dtype(solver):
    """float32 graphs for the partial solver (its arithmetic is float32), float64 for the reference."""
    return torch.float32 if solver == "lanczos" else _EIGH_DTYPE


def eigen_attention_map(features: torch.Tensor, tau: float = 0.2, eps: float = 1e-5,
                        valid_mask: Optional[torch.Tensor] = None,
                        border_mask: Optional[torch.Tensor] = None, solver: str = "lanczos") -> torch.Tensor:
    """Eigen attention map M of each image (supplement Eqs. 1-8), batched.

    Args:
        features: (B, h, w, c) float patch features on any device.
        tau: cosine threshold of the affinity, in [-1, 1].
        eps: affinity of dissimilar pairs, > 0.
        valid_mask: optional (B, h, w) bool, True for real patches; padded (or already found)
            patches are detached from the graph and do not change the real nodes' solution.
        border_mask: optional (B, h, w) bool, the patches the border rule of :func:`fix_sign`
            counts (only valid ones count). Default: :func:`border_of_valid` of ``valid_mask``.

    Returns:
        M: (B, h, w) in the features' dtype: the second-smallest generalised eigenvector ``y1``
        (scaled so that ``y1^T D y1 = 1``), sign-fixed so that the foreground is ``M > mean`` over
        the valid patches; 0 at invalid patches and everywhere for an image without structure
        (fewer than two valid patches or all valid affinities equal). Computed in float64.
    """
    M, _ = _eigen_attention_map64(features, tau, eps, valid_mask, border_mask, solver)
    return M.to(features.dtype)


def masks_from_map(maps: torch.Tensor, valid_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Foreground masks: ``M > mean(M over valid patches)``, restricted to valid patches.

    Args:
        maps: (B, h, w) sign-fixed eigen attention maps.
        valid_mask: optional (B, h, w) bool.

    Returns:
        (B, h, w) bool; all False for an all-constant map (no foreground).
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, h, w), got ndim={maps.ndim}")
    if valid_mask is None:
        valid_mask = torch.ones_like(maps, dtype=torch.bool)
    elif tuple(valid_mask.shape) != tuple(maps.shape):
        raise ValueError(f"valid_mask shape {tuple(valid_mask.shape)} != maps shape {tuple(maps.shape)}")
    valid_mask = valid_mask.to(maps.device)
    n = valid_mask.sum((1, 2)).clamp(min=1)
    mean = (maps * valid_mask).sum((1, 2)) / n
    return (maps > mean[:, None, None]) & valid_mask


def components_to_boxes(fg: np.ndarray, score_map: np.ndarray, image_size: Tuple[float, float],
                        grid_size: Tuple[int, int], min_patches: int = 1
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes of the 8-connected components of one foreground mask, plus the whole foreground's box.

    Patch ``(i, j)`` covers ``x in [j*W/w, (j+1)*W/w)``, ``y in [i*H/h, (i+1)*H/h)``.

    Args:
        fg: (h, w) bool foreground on the padded grid (True only inside the valid grid).
        score_map: (h, w) float, the map whose mean inside a region is that region's score.
        image_size: (H, W) of the image, in the coordinates the boxes are wanted in.
        grid_size: (h_b, w_b), the image's own valid patch grid.
        min_patches: components (and the whole foreground) with fewer patches are dropped.

    Returns:
        boxes (k, 4) float32 XYXY clipped to the image, scores (k,) float32; components first
        (in label order), the whole-foreground box last; k = 0 for an empty foreground.
    """
    H, W = float(image_size[0]), float(image_size[1])
    gh, gw = grid_size
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    idx = np.arange(1, n + 1)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    scores = np.asarray(ndimage.mean(score_map, labels, idx), dtype=np.float64)
    slices = ndimage.find_objects(labels)
    # (i0, j0, i1 exclusive, j1 exclusive) per component, then the whole foreground.
    spans = [(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices]
    rows, cols = np.nonzero(fg)
    spans.append((rows.min(), cols.min(), rows.max() + 1, cols.max() + 1))
    sizes = np.append(sizes, fg.sum())
    scores = np.append(scores, score_map[fg].mean())
    spans = np.asarray(spans, dtype=np.float64)
    boxes = np.stack([spans[:, 1] * W / gw, spans[:, 0] * H / gh,
                      spans[:, 3] * W / gw, spans[:, 2] * H / gh], axis=1)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0.0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0.0, H)
    keep = sizes >= min_patches
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32)


def _valid_grid_sizes(valid_mask: torch.Tensor) -> np.ndarray:
    """(B, 2) int (h_b, w_b) of top-left rectangular valid masks; ValueError otherwise."""
    B, h, w = valid_mask.shape
    gh = valid_mask.any(2).sum(1)
    gw = valid_mask.any(1).sum(1)
    rows = torch.arange(h, device=valid_mask.device)
    cols = torch.arange(w, device=valid_mask.device)
    rect = (rows[None, :, None] < gh[:, None, None]) & (cols[None, None, :] < gw[:, None, None])
    if not torch.equal(rect, valid_mask):
        raise ValueError("valid_mask must mark a top-left rectangle of real patches per image "
                         "(padding at the bottom and right, as Detectron2's ImageList pads)")
    return torch.stack([gh, gw], 1).cpu().numpy()


def _check_prior_args(image_sizes, B, num_rounds, topk, nms_threshold, min_patches) -> np.ndarray:
    sizes = np.asarray(image_sizes.cpu() if isinstance(image_sizes, torch.Tensor) else image_sizes,
                       dtype=np.float64)
    if sizes.shape != (B, 2):
        raise ValueError(f"image_sizes must hold one (height, width) per image: expected shape "
                         f"({B}, 2), got {sizes.shape}")
    if not (sizes > 0).all():
        raise ValueError(f"image_sizes must be positive, got {sizes.tolist()}")
    if int(num_rounds) != num_rounds or num_rounds < 1:
        raise ValueError(f"num_rounds must be an integer >= 1, got {num_rounds}")
    if int(topk) != topk or topk < 1:
        raise ValueError(f"topk must be an integer >= 1, got {topk}")
    if not 0.0 <= float(nms_threshold) <= 1.0:
        raise ValueError(f"nms_threshold must lie in [0, 1], got {nms_threshold}")
    if int(min_patches) != min_patches or min_patches < 1:
        raise ValueError(f"min_patches must be an integer >= 1, got {min_patches}")
    return sizes


def priors_from_features(features: torch.Tensor, image_sizes: Sequence[Tuple[float, float]],
                         valid_mask: Optional[torch.Tensor] = None, tau: float = 0.2,
                         eps: float = 1e-5, num_rounds: int = 3, topk: int = 30,
                         nms_threshold: float = 0.7, min_patches: int = 1, solver: str = "lanczos",
                         tau_quantile: float = 0.0) -> list:
    """Scored object priors per image from NCut rounds on patch features.

    Round r (``num_rounds`` in all, each one batched over the images): eigen attention map on the
    patches not yet found, foreground ``M > mean``, one box per 8-connected component plus the box
    of the whole foreground, score = mean inside the region of ``M / max|M|`` (over that round's
    valid patches). The round's foreground patches are then detached from the graph for the next
    round. An image stops early when a round finds no foreground (its remaining patches are
    uniform or fewer than two). Finally NMS (``nms_threshold``) and the top ``topk`` by score.

    Args:
        features: (B, h, w, c) float patch features (padded batch), any device.
        image_sizes: B pairs (H, W): each image's size in the coordinates wanted for its boxes.
        valid_mask: optional (B, h, w) bool; each image's real patches must be the top-left
            (h_b, w_b) rectangle. Patch (i, j) of image b covers
            ``x in [j*W/w_b, (j+1)*W/w_b)``, ``y in [i*H/h_b, (i+1)*H/h_b)``.
        tau, eps: affinity parameters (see :func:`eigen_attention_map`).
        num_rounds: number of NCut rounds (>= 1).
        topk: maximum number of priors per image.
        nms_threshold: IoU threshold of the NMS.
        min_patches: regions with fewer patches give no box.
        solver: eigen solver (see :func:`second_eigenvector`). The affinity is computed once and only
            re-masked in each round.
        tau_quantile: 0 (``tau`` is the threshold) or, in (0, 1), each image's threshold is this quantile of
            the cosines of its valid patch pairs (:class:`RelativeTau`; ``tau`` is then unused).

    Returns:
        list of B tuples (boxes (k, 4) float32 XYXY absolute coords clipped to the image,
        scores (k,) float32, sorted by decreasing score), k <= topk. k = 0 when nothing is found
        (e.g. all features identical): the caller then keeps its previous priors for that image.
    """
    valid_mask = _check_graph_args(features, tau, eps, valid_mask)
    B = features.shape[0]
    sizes = _check_prior_args(image_sizes, B, num_rounds, topk, nms_threshold, min_patches)
    grids = _valid_grid_sizes(valid_mask)
    border = border_of_valid(valid_mask)

    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    h, w, c = features.shape[1:]
    threshold = RelativeTau(tau_quantile, valid_mask.reshape(B, h * w)) if tau_quantile else tau
    graph = _adjacency(features.reshape(B, h * w, c), threshold, _graph_dtype(solver))  # the same in every round
    remaining = valid_mask.clone()
    found = [[] for _ in range(B)]
    for _ in range(int(num_rounds)):
        if not remaining.any():
            break
        maps, _ = _eigen_attention_map64(features, tau, eps, remaining, border, solver, graph)
        fg = masks_from_map(maps, remaining)
        peak = torch.where(remaining, maps.abs(), torch.zeros_like(maps)).amax((1, 2))
        score_maps = (maps / peak.clamp(min=1e-30)[:, None, None]).cpu().numpy()
        fg_np = fg.cpu().numpy()
        empty = ~fg.any(dim=(1, 2))
        for b in np.nonzero(~empty.cpu().numpy())[0]:
            found[b].append(components_to_boxes(fg_np[b], score_maps[b], sizes[b], grids[b],
                                                min_patches))
        # Detach what was found; images with nothing found stop (their next round would repeat).
        remaining = remaining & ~fg & ~empty[:, None, None]

    results = []
    for b in range(B):
        if not found[b]:
            results.append((np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)))
            continue
        boxes = torch.from_numpy(np.concatenate([f[0] for f in found[b]]))
        scores = torch.from_numpy(np.concatenate([f[1] for f in found[b]]))
        keep = nms(boxes, scores, float(nms_threshold))[: int(topk)]
        results.append((boxes[keep].numpy(), scores[keep].numpy()))
    return results
