"""Refresh generators: the "current priors" of a prior refresh, read from the model being trained.

Each generator is a class registered by name (``JOINDET.REFRESH.GENERATOR``), built from a yacs config with
Detectron2's ``@configurable`` (``cls(cfg, mapper=...)``, its ``from_config`` reading its keys) and in a
LazyConfig with ``L(cls)(...)``, and called by the refresh hook on
every process's shard as ``generator(model, dataset_dicts, previous)`` (``previous``: the
``PriorVersion`` in use), returning ``{image_id: (boxes (k, 4) float32 XYXY in original pixels,
scores (k,) float32)}``. What it returns goes through the Box Smooth Module against ``previous``; an
image for which it returns nothing keeps its priors. A generator reads the parts of the model that
learn (encoder, decoder, heads): fixed heuristics (selective search, colour NCut, NCut on the frozen
backbone) are version-0 sources, not refreshes.

- ``ncut_encoder``: the paper's eigen attention map on the encoder output (NCut, MaskCut rounds).
- ``detector``: the model's own class-agnostic detections (objectness-scored decoder boxes, NMS, top K).
- ``detector_ncut``: those detections re-scored by the eigen attention map of the same forward pass:
  objectness x (1 + mean of M inside the box) / 2, with M scaled to [-1, 1] (foreground positive).
- ``rescore``: the precedent boxes themselves, each scored by the model (``JOINDET.REFRESH.RESCORE_QUALITY``,
  :mod:`joindet.priors.rescore`: max over queries of objectness x IoU(query box, prior), or the objectness
  of the query that overlaps the prior most). Recall stays that of the precedent set; the ranking is the model's.
- ``rescore_ncut``: ``rescore`` over the precedent boxes and the encoder's NCut regions (``ncut_encoder``'s boxes,
  same forward pass): the regions join the pool the model ranks, so recall can rise where the precedent boxes
  miss objects, and a region supervises only where the model ranks it among the best.
- ``rescore_online``: the same score, taken from the training steps since the last refresh (each prior's
  latest augmented view, :mod:`joindet.priors.online`) instead of a forward pass of its own:
  the refresh costs no inference. A prior no view kept keeps its precedent score; an image no view showed
  keeps its priors. Only inside a training run (the refresh hook attaches the recorder to the model); the
  records are not checkpointed, so the first refresh after a resume sees only the views since the resume.
"""
import inspect
from typing import Dict, Tuple

import numpy as np
import torch
from torchvision.ops import nms

from detectron2.config import configurable
from detectron2.utils.registry import Registry

from . import defaults as D
from .generation import center_features, generate_ncut_priors, ncut_priors_of_batch, run_over_images
from .ncut import RelativeTau, _check_graph_args, _check_prior_args, eigen_attention_map
from .online import OnlineObjectness
from .rescore import DEFAULT_RESCORE_QUALITY, rescore_quality
from ..utils.registry import register_by_name

__all__ = ["REFRESH_GENERATOR_REGISTRY", "build_refresh_generator", "refresh_generator_name", "box_mean_of_map"]

REFRESH_GENERATOR_REGISTRY = Registry("JOINDET_REFRESH_GENERATOR")
REFRESH_GENERATOR_REGISTRY.__doc__ = "Refresh generators by name: JOINDET.REFRESH.GENERATOR."

Priors = Dict[int, Tuple[np.ndarray, np.ndarray]]


def build_refresh_generator(cfg, mapper):
    """The generator named ``JOINDET.REFRESH.GENERATOR``, built from the yacs ``cfg`` by its class's
    ``from_config``; ``mapper``: the test-time mapper the images are read with."""
    name = cfg.JOINDET.REFRESH.GENERATOR
    if name not in REFRESH_GENERATOR_REGISTRY:
        raise ValueError(f"JOINDET.REFRESH.GENERATOR: unknown refresh generator {name!r}; registered: "
                         f"{sorted(n for n, _ in REFRESH_GENERATOR_REGISTRY)}")
    return REFRESH_GENERATOR_REGISTRY.get(name)(cfg, mapper=mapper)


def refresh_generator_name(generator) -> str:
    """The name ``generator``'s class is registered under (what a bank version records as its source), else
    its ``name`` attribute or its class name."""
    for name, cls in REFRESH_GENERATOR_REGISTRY:
        if type(generator) is cls:
            return name
    return getattr(generator, "name", type(generator).__name__)


def _register(name):
    return register_by_name(REFRESH_GENERATOR_REGISTRY, name, "refresh generator")


def _ncut_args(cfg):
    n = cfg.JOINDET.NCUT
    return {"tau": n.TAU, "eps": n.EPS, "num_rounds": n.NUM_ROUNDS, "nms_threshold": n.NMS_THRESH,
            "center": n.CENTER, "topk": cfg.JOINDET.PRIORS.TOPK, "solver": n.SOLVER, "tau_quantile": n.TAU_QUANTILE}


_NCUT_ARGS = ("tau", "eps", "num_rounds", "topk", "nms_threshold", "center", "solver", "tau_quantile")


def _check_ncut_args(ncut):
    """Refuse, when a generator is made, NCut arguments that :func:`generate_ncut_priors` would refuse at the
    first refresh: an unknown name, or a value out of range (those not given take its defaults)."""
    unknown = sorted(set(ncut) - set(_NCUT_ARGS))
    if unknown:
        raise TypeError(f"unknown NCut argument(s) {unknown}; the NCut arguments are {list(_NCUT_ARGS)}")
    args = {k: p.default for k, p in inspect.signature(generate_ncut_priors).parameters.items() if k in _NCUT_ARGS}
    args.update(ncut)
    _check_graph_args(torch.zeros((1, 1, 1, 1)), args["tau"], args["eps"], None)
    _check_prior_args([[1.0, 1.0]], 1, args["num_rounds"], args["topk"], args["nms_threshold"], 1)
    if args["tau_quantile"]:
        RelativeTau(args["tau_quantile"], torch.ones((1, 1), dtype=torch.bool))
    if args["solver"] not in ("lanczos", "dense"):
        raise ValueError(f"solver must be 'lanczos' or 'dense', got {args['solver']!r}")


@_register("ncut_encoder")
class NCutEncoderGenerator:
    """NCut priors on one level of the encoder's output (the paper's refresh). ``ncut``: the NCut arguments of
    :func:`joindet.priors.generation.generate_ncut_priors` (``tau``, ``eps``, ``num_rounds``, ``topk``,
    ``nms_threshold``, ``center``, ``solver``, ``tau_quantile``); one left out takes that function's default."""

    @configurable
    def __init__(self, *, mapper, feature_level=D.NCUT_FEATURE_LEVEL, batch_size=D.NCUT_BATCH_SIZE, **ncut):
        _check_ncut_args(ncut)
        self.mapper, self.feature_level, self.batch_size, self.ncut = mapper, feature_level, batch_size, ncut

    @classmethod
    def from_config(cls, cfg, mapper=None):
        return {"mapper": mapper, "feature_level": cfg.JOINDET.NCUT.FEATURE_LEVEL,
                "batch_size": cfg.JOINDET.NCUT.BATCH_SIZE, **_ncut_args(cfg)}

    def __call__(self, model, dataset_dicts, previous=None) -> Priors:
        return generate_ncut_priors(
            model, dataset_dicts, self.mapper, lambda m, batch: m.encoder_patch_features(batch, self.feature_level),
            batch_size=self.batch_size, **self.ncut)


def _top_detections(boxes, scores, nms_threshold, topk):
    keep = nms(boxes.float(), scores.float(), nms_threshold)[:topk]
    return boxes[keep], scores[keep]


@_register("detector")
class DetectorGenerator:
    """The model's class-agnostic detections: every query's box scored by its objectness, NMS, top K."""

    @configurable
    def __init__(self, *, mapper, batch_size=D.REFRESH_BATCH_SIZE, topk=D.TOPK, nms_threshold=D.REFRESH_NMS_THRESHOLD):
        self.mapper, self.batch_size, self.topk, self.nms_threshold = mapper, batch_size, topk, nms_threshold

    @classmethod
    def from_config(cls, cfg, mapper=None):
        return {"mapper": mapper, "batch_size": cfg.JOINDET.REFRESH.BATCH_SIZE, "topk": cfg.JOINDET.PRIORS.TOPK,
                "nms_threshold": cfg.JOINDET.REFRESH.NMS_THRESH}

    def _detect(self, model, batch):
        return [_top_detections(b, s, self.nms_threshold, self.topk) for b, s in model.objectness_predictions(batch)]

    def __call__(self, model, dataset_dicts, previous=None) -> Priors:
        return run_over_images(model, dataset_dicts, self.mapper, self._detect, batch_size=self.batch_size,
                               what="detector priors")


def box_mean_of_map(maps, valid, boxes, image_size):
    """Mean of a patch map inside each box.

    Args:
        maps: (h, w) float map on the padded patch grid; valid: (h, w) bool (the image's patches are the
            top-left (h_b, w_b) block); boxes: (k, 4) XYXY in the coordinates of ``image_size`` = (H, W).
    Returns (k,) means over the patches whose centres lie inside each box (the nearest patch when none does).
    """
    h_b = int(valid.any(1).sum())
    w_b = int(valid.any(0).sum())
    grid = maps[:h_b, :w_b].to(torch.float64)
    H, W = image_size
    integral = torch.nn.functional.pad(grid.cumsum(0).cumsum(1), (1, 0, 1, 0))
    # patch index range [lo, hi) whose centres (j + 0.5) * W / w_b fall in [x1, x2]
    x1 = (boxes[:, 0] * w_b / W - 0.5).ceil().clamp(0, w_b - 1).long()
    x2 = (boxes[:, 2] * w_b / W - 0.5).floor().clamp(0, w_b - 1).long()
    y1 = (boxes[:, 1] * h_b / H - 0.5).ceil().clamp(0, h_b - 1).long()
    y2 = (boxes[:, 3] * h_b / H - 0.5).floor().clamp(0, h_b - 1).long()
    x2, y2 = torch.maximum(x1, x2) + 1, torch.maximum(y1, y2) + 1
    total = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
    return (total / ((y2 - y1) * (x2 - x1))).to(maps.dtype)


@_register("detector_ncut")
class DetectorNCutGenerator(DetectorGenerator):
    """The model's detections re-scored by its own eigen attention map (same forward pass): objectness x
    (1 + mean of M / max|M| inside the box) / 2, so a box on the foreground keeps its objectness and one on
    the background loses up to all of it. NMS and top K after the re-scoring."""

    @configurable
    def __init__(self, *, feature_level=D.NCUT_FEATURE_LEVEL, tau=D.NCUT_TAU, eps=D.NCUT_EPS, center=D.NCUT_CENTER,
                 solver=D.NCUT_SOLVER, **kwargs):
        super().__init__(**kwargs)
        self.feature_level, self.tau, self.eps, self.center, self.solver = feature_level, tau, eps, center, solver

    @classmethod
    def from_config(cls, cfg, mapper=None):
        n = cfg.JOINDET.NCUT
        return {**super().from_config(cfg, mapper), "feature_level": n.FEATURE_LEVEL, "tau": n.TAU, "eps": n.EPS,
                "center": n.CENTER, "solver": n.SOLVER}

    def _detect(self, model, batch):
        preds, feats, valid, _ = model.objectness_predictions(batch, level=self.feature_level)
        if self.center:
            feats = center_features(feats, valid)
        maps = eigen_attention_map(feats, self.tau, self.eps, valid_mask=valid, solver=self.solver)
        peak = torch.where(valid, maps.abs(), torch.zeros_like(maps)).amax((1, 2)).clamp(min=1e-30)
        out = []
        for (boxes, objectness), m, v, p, x in zip(preds, maps, valid, peak, batch):
            inside = box_mean_of_map(m / p, v, boxes, (x["height"], x["width"]))
            out.append(_top_detections(boxes, objectness * (1 + inside.to(objectness.dtype)) / 2,
                                       self.nms_threshold, self.topk))
        return out


@_register("rescore")
class RescoreGenerator:
    """The precedent priors, each re-scored by the model (``quality``: see :mod:`joindet.priors.rescore`).
    The boxes stay (so does recall); the Box Smooth Module then blends old and new scores."""

    @configurable
    def __init__(self, *, mapper, batch_size=D.REFRESH_BATCH_SIZE, quality=DEFAULT_RESCORE_QUALITY):
        self.mapper, self.batch_size, self.quality = mapper, batch_size, quality

    @classmethod
    def from_config(cls, cfg, mapper=None):
        return {"mapper": mapper, "batch_size": cfg.JOINDET.REFRESH.BATCH_SIZE,
                "quality": cfg.JOINDET.REFRESH.RESCORE_QUALITY}

    def _predict(self, model, batch):
        """Per image of ``batch``: the model's predictions (boxes, objectness) and the boxes the pool adds to the
        precedent priors (None: none)."""
        return [(p, None) for p in model.objectness_predictions(batch)]

    def __call__(self, model, dataset_dicts, previous=None) -> Priors:
        if previous is None:
            raise ValueError(f"the {refresh_generator_name(self)} refresh generator needs the precedent priors")

        def rescore(m, batch):
            out = []
            for ((boxes, objectness), added), x in zip(self._predict(m, batch), batch):
                pool = torch.as_tensor(previous.get(x["image_id"])[0], dtype=boxes.dtype,
                                       device=boxes.device).reshape(-1, 4)
                if added is not None:
                    added = torch.as_tensor(added, dtype=boxes.dtype, device=boxes.device).reshape(-1, 4)
                    pool = torch.cat([pool, added])
                out.append((pool.cpu(), rescore_quality(pool, boxes, objectness, self.quality).cpu()))
            return out

        return run_over_images(model, dataset_dicts, self.mapper, rescore, batch_size=self.batch_size,
                               what="re-scored priors")


@_register("rescore_ncut")
class RescoreNCutGenerator(RescoreGenerator):
    """``rescore`` over a pool the encoder widens: the precedent priors and the NCut regions of the encoder output
    (``ncut_encoder``'s boxes, from the same forward pass), every box scored by the model (``quality``). The Box
    Smooth Module then merges a region into the precedent prior it overlaps or adds it as a new prior; with more
    priors kept (``JOINDET.PRIORS.TOPK``) than supervise (``JOINDET.PRIORS.TRAIN_TOPK``), a region supervises only
    where the model ranks it among the best. ``feature_level`` and ``ncut``: as :class:`NCutEncoderGenerator`'s."""

    @configurable
    def __init__(self, *, mapper, batch_size=D.REFRESH_BATCH_SIZE, quality=DEFAULT_RESCORE_QUALITY,
                 feature_level=D.NCUT_FEATURE_LEVEL, **ncut):
        super().__init__(mapper=mapper, batch_size=batch_size, quality=quality)
        _check_ncut_args(ncut)
        self.feature_level, self.ncut = feature_level, ncut

    @classmethod
    def from_config(cls, cfg, mapper=None):
        return {**super().from_config(cfg, mapper), "feature_level": cfg.JOINDET.NCUT.FEATURE_LEVEL,
                **_ncut_args(cfg)}

    def _predict(self, model, batch):
        preds, feats, valid, _ = model.objectness_predictions(batch, level=self.feature_level)
        regions = ncut_priors_of_batch(feats, valid, batch, **self.ncut)
        return [(p, boxes) for p, (boxes, _) in zip(preds, regions)]


@_register("rescore_online")
class OnlineRescoreGenerator:
    """``rescore`` from the objectness recorded during training (see the module docstring). It owns the
    recorder (``recorder``, an :class:`OnlineObjectness`); the refresh hook wires it to the model with
    :meth:`attach` before training, and each call reads and then clears it."""

    @configurable
    def __init__(self, *, quality=DEFAULT_RESCORE_QUALITY):
        self.quality = quality
        self.recorder = OnlineObjectness(quality)
        self.attached = False

    @classmethod
    def from_config(cls, cfg, mapper=None):
        return {"quality": cfg.JOINDET.REFRESH.RESCORE_QUALITY}

    def attach(self, model):
        """Make ``model`` (a JoinDet) record its priors' objectness into ``self.recorder`` in every training step
        from now on (``model.set_objectness_recorder``)."""
        if not callable(getattr(model, "set_objectness_recorder", None)):
            raise ValueError(f"the rescore_online refresh needs a JoinDet model, got {type(model).__name__}")
        model.set_objectness_recorder(self.recorder)
        self.attached = True

    def __call__(self, model, dataset_dicts, previous=None) -> Priors:
        if previous is None or not self.attached:
            raise ValueError("the rescore_online refresh scores the precedent priors with the objectness recorded "
                             "in the training steps: it runs inside a training run only (use rescore elsewhere)")
        recorder = self.recorder
        seen = recorder.gathered(previous.version)
        recorder.clear()  # the next refresh scores the next version's views
        out = {}
        for d in dataset_dicts:
            quality = seen.get(d["image_id"])
            if quality is None:
                continue
            boxes, scores = previous.get(d["image_id"])
            if quality.size != len(scores):
                raise ValueError(f"image {d['image_id']}: {quality.size} recorded scores for {len(scores)} priors of "
                                 f"version {previous.version}")
            out[d["image_id"]] = (np.asarray(boxes, np.float32),
                                  np.where(np.isnan(quality), scores, quality).astype(np.float32))
        return out
