"""Version-0 priors from NCut on the (frozen, pretrained) backbone's features."""
from .generation import generate_ncut_priors
from .sources import register_prior_source

__all__ = ["NCutBackboneSource"]


@register_prior_source("ncut_backbone")
class NCutBackboneSource:
    """NCut priors on a backbone feature map (``res4`` by default) of the model passed at call time:
    the natural version 0 with a pretrained (e.g. SwAV) backbone, before the encoder has learned."""

    def __init__(self, *, mapper, feature="res4", weights="", batch_size=4, tau=0.2, eps=1e-5, num_rounds=3,
                 topk=30, nms_threshold=0.7, center=False):
        self.mapper = mapper
        self.feature = feature
        self.weights = weights
        self.batch_size = batch_size
        self.ncut = dict(tau=tau, eps=eps, num_rounds=num_rounds, topk=topk, nms_threshold=nms_threshold,
                         center=center)

    @classmethod
    def from_config(cls, cfg, mapper):
        n = cfg.JOINDET.NCUT
        return {"mapper": mapper, "feature": n.BACKBONE_FEATURE, "weights": cfg.MODEL.WEIGHTS,
                "batch_size": n.BATCH_SIZE, "tau": n.TAU, "eps": n.EPS, "num_rounds": n.NUM_ROUNDS,
                "topk": cfg.JOINDET.PRIORS.TOPK, "nms_threshold": n.NMS_THRESH, "center": n.CENTER}

    def cache_key(self):
        return {"feature": self.feature, "weights": self.weights, **self.ncut}

    def __call__(self, dataset_dicts, model=None):
        if model is None:
            raise ValueError("the ncut_backbone prior source needs the model (its backbone features)")
        priors = generate_ncut_priors(
            model, dataset_dicts, self.mapper, lambda m, batch: m.backbone_patch_features(batch, self.feature),
            batch_size=self.batch_size, **self.ncut)
        return [priors[d["image_id"]] for d in dataset_dicts]
