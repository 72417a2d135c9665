"""Version-0 priors from NCut: on the (frozen, pretrained) backbone's features, or on the image's colours."""
import numpy as np
import torch
from detectron2.config import configurable
from torch.nn import functional as F

from ..data.image_io import SkippedImages, UnusableImage, read_image
from . import defaults as D
from .generation import generate_ncut_priors
from .ncut import priors_from_features
from .sources import register_prior_source

__all__ = ["NCutBackboneSource", "NCutColorSource"]


@register_prior_source("ncut_backbone")
class NCutBackboneSource:
    """NCut priors on a backbone feature map (``res4`` by default) of the model passed at call time:
    the natural version 0 with a pretrained (e.g. SwAV) backbone, before the encoder has learned."""

    @configurable
    def __init__(self, *, mapper, feature=D.NCUT_BACKBONE_FEATURE, weights="", batch_size=D.NCUT_BATCH_SIZE,
                 tau=D.NCUT_TAU, eps=D.NCUT_EPS, num_rounds=D.NCUT_NUM_ROUNDS, topk=D.TOPK,
                 nms_threshold=D.NCUT_NMS_THRESHOLD, center=D.NCUT_CENTER, solver=D.NCUT_SOLVER):
        self.mapper = mapper
        self.feature = feature
        self.weights = weights
        self.batch_size = batch_size
        self.ncut = dict(tau=tau, eps=eps, num_rounds=num_rounds, topk=topk, nms_threshold=nms_threshold,
                         center=center, solver=solver)

    @classmethod
    def from_config(cls, cfg, mapper=None):
        n = cfg.JOINDET.NCUT
        return {"mapper": mapper, "feature": n.BACKBONE_FEATURE, "weights": cfg.MODEL.WEIGHTS,
                "batch_size": n.BATCH_SIZE, "tau": n.TAU, "eps": n.EPS, "num_rounds": n.NUM_ROUNDS,
                "topk": cfg.JOINDET.PRIORS.TOPK, "nms_threshold": n.NMS_THRESH, "center": n.CENTER,
                "solver": n.SOLVER}

    def cache_key(self):
        return {"feature": self.feature, "weights": self.weights, **self.ncut}

    def __call__(self, dataset_dicts, model=None):
        if model is None:
            raise ValueError("the ncut_backbone prior source needs the model (its backbone features)")
        priors = generate_ncut_priors(
            model, dataset_dicts, self.mapper, lambda m, batch: m.backbone_patch_features(batch, self.feature),
            batch_size=self.batch_size, **self.ncut)
        # an image the mapper skipped (unusable: counted and logged by the mapper) has no result: no priors
        empty = (np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
        return [priors.get(d["image_id"], empty) for d in dataset_dicts]


@register_prior_source("ncut_color")
class NCutColorSource:
    """NCut on the image's own patch-mean colours (no model): a version 0 that sees the image, for set-ups
    with no pretrained backbone (docs/design.md, "Version 0 without a pretrained backbone"). RGB vectors are all
    close in angle, hence a tau near 1.
    An unusable image (``joindet.data.image_io.read_image`` raises ``UnusableImage``) gets no priors; the skips
    are counted by reason in ``last_skipped`` (:class:`SkippedImages` of the last call), logged as they happen
    and summarised at the end of the pass."""

    @configurable
    def __init__(self, *, patch=D.NCUT_COLOR_PATCH, tau=D.NCUT_COLOR_TAU, eps=D.NCUT_EPS, num_rounds=D.NCUT_NUM_ROUNDS,
                 topk=D.TOPK, nms_threshold=D.NCUT_NMS_THRESHOLD, solver=D.NCUT_SOLVER):
        if patch < 1:
            raise ValueError(f"patch must be >= 1, got {patch}")
        self.patch = int(patch)
        self.last_skipped = None
        self.ncut = dict(tau=tau, eps=eps, num_rounds=num_rounds, topk=topk, nms_threshold=nms_threshold,
                         solver=solver)

    @classmethod
    def from_config(cls, cfg, mapper=None):
        n = cfg.JOINDET.NCUT
        return {"patch": n.COLOR_PATCH, "tau": n.COLOR_TAU, "eps": n.EPS, "num_rounds": n.NUM_ROUNDS,
                "topk": cfg.JOINDET.PRIORS.TOPK, "nms_threshold": n.NMS_THRESH, "solver": n.SOLVER}

    def cache_key(self):
        return {"patch": self.patch, **self.ncut}

    def __call__(self, dataset_dicts, model=None):
        results = []
        # no limit on consecutive skips: a bad image only loses its priors here (training reports the rest)
        self.last_skipped = skipped = SkippedImages("ncut_color priors", max_consecutive=None)
        for d in dataset_dicts:
            expected = (d["height"], d["width"]) if "height" in d and "width" in d else None
            try:
                image = read_image(d["file_name"], format="RGB", expected_size=expected)
            except UnusableImage as e:
                skipped.skip(e)
                results.append((np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)))
                continue
            skipped.used_one()
            x = torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
            if min(x.shape[-2:]) < 2 * self.patch:
                results.append((np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)))
                continue
            feats = F.avg_pool2d(x, self.patch).permute(0, 2, 3, 1)
            results.extend(priors_from_features(feats, [image.shape[:2]], **self.ncut))
        skipped.log_summary()
        return results
