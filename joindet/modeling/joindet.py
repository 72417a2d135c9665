"""JoinDet's pretraining model: Deformable DETR with a class-agnostic objectness head and an
object-embedding head, supervised by object priors (pseudo boxes)."""
import copy

import torch
from torch.nn import functional as F
from torchvision.ops import box_convert, box_iou

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..priors import defaults as D
from ..priors.rescore import rescore_quality
from .criterion import SetCriterion
from .deformable_detr import DeformableDETR
from .utils import MLP

__all__ = ["JoinDet", "ObjectEmbeddingCriterion", "PRETRAIN_ONLY_PREFIXES", "prior_objectness_targets"]

# Parameters that exist only for pretraining: dropped when a JoinDet checkpoint is fine-tuned.
PRETRAIN_ONLY_PREFIXES = ("class_embed.", "embed_head.", "embed_encoder.", "transformer.decoder.class_embed.")


OBJECTNESS_TARGETS = ("one", "refreshed_score")  # JOINDET.PRIORS.OBJECTNESS_TARGET and LOSS_WEIGHT


def prior_objectness_targets(x, mode):
    """
    The objectness targets of one training input's priors, for the queries matched to them.

    Args:
        x: a JoinDetDatasetMapper output: ``instances.gt_scores`` (n,), ``prior_version`` and
            ``prior_best_score`` (the highest score of the image's bank entry).
        mode: ``"one"``: every prior is an object (returns None: the criterion's hard target 1);
            ``"refreshed_score"``: the priors of a refreshed version (>= 1, scored by the model) get their
            score divided by the image's best, clipped to [0, 1], so that what a refresh learned reaches the
            training; version 0's scores are a heuristic's (selective search's rank, a crop's order) and say
            nothing about objectness, so its priors keep the target 1 (as does an entry without a positive score).

    Returns:
        None, or a (n,) float32 tensor in [0, 1].
    """
    if mode == "one":
        return None
    if mode != "refreshed_score":
        raise ValueError(f"objectness target mode must be one of {OBJECTNESS_TARGETS}, got {mode!r}")
    for key in ("prior_version", "prior_best_score"):
        if key not in x:
            raise ValueError(f"'refreshed_score' (an objectness target or loss weight) needs {key!r} in each training input "
                             f"(JoinDetDatasetMapper adds it); input {x.get('file_name')} has none")
    scores = x["instances"].gt_scores.float()
    best = float(x["prior_best_score"])
    if x["prior_version"] < 1 or best <= 0:
        return torch.ones_like(scores)
    return (scores / best).clamp(0.0, 1.0)


class ObjectEmbeddingCriterion(SetCriterion):
    """SetCriterion plus ``loss_embed``: L1 between the predicted embedding of each matched query and
    the embedding of its prior's crop (mean over the embedding dimension, summed over matched pairs,
    divided by the number of priors). Final decoder layer only; not part of the matching cost.

    ``drop_loss_iou`` > 0 turns on CutLER's DropLoss for the priors: a query that is matched to no prior and
    whose predicted box overlaps no prior of its image at an IoU above ``drop_loss_iou`` gets no no-object
    term, so that the model is not taught that what the priors lack (an object selective search missed) is
    background. 0 (the default): every unmatched query is pushed to no-object, as in DETReg."""

    def __init__(self, *args, drop_loss_iou: float = D.DROP_LOSS_IOU, **kwargs):
        super().__init__(*args, losses=("labels", "boxes", "embed"), aux_losses=("labels", "boxes"), **kwargs)
        if isinstance(drop_loss_iou, bool) or not 0.0 <= float(drop_loss_iou) < 1.0:
            raise ValueError(f"drop_loss_iou must be in [0, 1), got {drop_loss_iou!r}")
        self.drop_loss_iou = float(drop_loss_iou)
        self.loss_map["embed"] = self.loss_embed

    def label_loss_weight(self, outputs, targets, indices):
        """The per-target weights of the matched queries (:meth:`SetCriterion.label_loss_weight`), and DropLoss
        (``drop_loss_iou`` > 0): 0 for a query matched to no prior whose box overlaps every prior of its image
        at IoU <= ``drop_loss_iou``."""
        weight = super().label_loss_weight(outputs, targets, indices)
        if self.drop_loss_iou <= 0:
            return weight
        boxes = box_convert(outputs["pred_boxes"].detach(), "cxcywh", "xyxy")  # (B, Q, 4), normalised
        keep = torch.zeros(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
        for i, (t, (pred_idx, _)) in enumerate(zip(targets, indices)):
            if t["boxes"].numel():
                priors = box_convert(t["boxes"].to(boxes.device, boxes.dtype), "cxcywh", "xyxy")
                keep[i] = box_iou(boxes[i], priors).amax(dim=1) > self.drop_loss_iou
            keep[i, pred_idx.to(boxes.device)] = True
        keep = keep.to(outputs["pred_logits"].dtype)
        return keep if weight is None else keep * weight

    def loss_embed(self, outputs, targets, indices, num_boxes):
        batch_idx, src_idx = self._matched(indices)
        pred = outputs["pred_embed"][batch_idx, src_idx]
        target = torch.cat([t["embeddings"][j] for t, (_, j) in zip(targets, indices)], dim=0)
        per_pair = F.l1_loss(pred, target.to(pred.dtype), reduction="none").mean(-1)
        weight = self.pair_weights(targets, indices)
        if weight is not None:
            per_pair = per_pair * weight.to(per_pair.device, per_pair.dtype)
        return {"loss_embed": per_pair.sum() / num_boxes}


@META_ARCH_REGISTRY.register()
class JoinDet(DeformableDETR):
    """Deformable DETR for unsupervised pretraining.

    Training inputs carry the priors as ``instances.gt_boxes`` (every prior is class 0, "object"; its matched
    query's objectness target is 1 or, with ``objectness_target``, see ``prior_objectness_targets``; with
    ``loss_weight`` "refreshed_score" that score also weighs the pair's classification, box and embedding terms) and
    their crops as ``prior_crops`` (n, 3, S, S) uint8 in the input format, aligned with the instances.
    Extra output: ``pred_embed`` (N, Q, E). The embedding targets come from ``embed_encoder`` (frozen,
    eval mode, no gradient): global-average-pooled ``res5`` of the crops. With ``embed_encoder="backbone"``
    it is the detector's own (frozen) backbone — the paper's "same SwAV encoder"; ``"frozen_copy"`` keeps a
    separate frozen copy, for set-ups where the backbone trains (e.g. the R18-from-scratch mini config).
    """

    @configurable
    def __init__(self, *, embed_dim, embed_encoder="backbone", objectness_target=D.OBJECTNESS_TARGET,
                 loss_weight=D.PRIOR_LOSS_WEIGHT, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("objectness_target", objectness_target), ("loss_weight", loss_weight)):
            if value not in OBJECTNESS_TARGETS:
                raise ValueError(f"{name} must be one of {OBJECTNESS_TARGETS}, got {value!r}")
        self.objectness_target = objectness_target
        self.loss_weight = loss_weight
        # where training steps record their priors' objectness (set_objectness_recorder; rescore_online)
        self.objectness_recorder = None
        d_model = self.transformer.d_model
        self.embed_head = MLP(d_model, d_model, embed_dim, 2)
        if embed_encoder == "frozen_copy":
            self.embed_encoder = copy.deepcopy(self.backbone)
            self.embed_encoder.requires_grad_(False)
        elif embed_encoder != "backbone":
            raise ValueError(f"embed_encoder must be 'backbone' or 'frozen_copy', got {embed_encoder!r}")
        else:
            self.embed_encoder = None
        shapes = self._encoder().output_shape()
        if "res5" not in shapes:
            raise ValueError("JoinDet's object embedding needs the backbone to output 'res5': add it to "
                             "MODEL.RESNETS.OUT_FEATURES or MODEL.TIMM.OUT_FEATURES")
        if shapes["res5"].channels != embed_dim:
            raise ValueError(f"JOINDET.EMBED_DIM ({embed_dim}) must equal the embedding encoder's res5 channels "
                             f"({shapes['res5'].channels})")

    @classmethod
    def from_config(cls, cfg):
        args = super().from_config(cfg)
        args["num_classes"] = 1  # class-agnostic objectness (the criterion: build_criterion, called by super)
        args["embed_dim"] = cfg.JOINDET.EMBED_DIM
        args["embed_encoder"] = cfg.JOINDET.EMBED_ENCODER
        args["objectness_target"] = cfg.JOINDET.PRIORS.OBJECTNESS_TARGET
        args["loss_weight"] = cfg.JOINDET.PRIORS.LOSS_WEIGHT
        return args

    @classmethod
    def build_criterion(cls, cfg, extra_weights=None):
        """Deformable DETR's criterion with one class ("object") and ``loss_embed`` (JOINDET.EMBED_LOSS_WEIGHT)."""
        extra = {"loss_embed": cfg.JOINDET.EMBED_LOSS_WEIGHT, **(extra_weights or {})}
        return super().build_criterion(cfg, extra, num_classes=1, criterion_class=ObjectEmbeddingCriterion,
                                       drop_loss_iou=cfg.JOINDET.DROP_LOSS_IOU)

    def _encoder(self):
        return self.backbone if self.embed_encoder is None else self.embed_encoder

    def sync_embed_encoder(self):
        """Copy the backbone's current weights into the frozen copy (after loading initial weights)."""
        if self.embed_encoder is not None:
            self.embed_encoder.load_state_dict(self.backbone.state_dict())

    def train(self, mode=True):
        super().train(mode)
        if self.embed_encoder is not None:
            self.embed_encoder.eval()  # frozen: BatchNorm statistics never update
        return self

    @torch.no_grad()
    def crop_embeddings(self, crops):
        """crops: (n, 3, S, S) uint8 in the input format. Returns (n, E) pooled res5 features."""
        if crops.shape[0] == 0:
            return crops.new_zeros((0, self.embed_head.layers[-1].out_features), dtype=torch.float32)
        encoder = self._encoder()
        was_training = encoder.training
        encoder.eval()
        x = (crops.to(self.device).float() - self.pixel_mean) / self.pixel_std
        feats = encoder(x)["res5"].mean(dim=(2, 3))
        encoder.train(was_training)
        return feats

    def set_objectness_recorder(self, recorder):
        """From now on every training step records its priors' objectness into ``recorder`` (an
        :class:`joindet.priors.online.OnlineObjectness`, or None to stop): the refresh hook wires the recorder of
        a generator that reads the training steps (``rescore_online``) here before training."""
        self.objectness_recorder = recorder

    def losses(self, outputs, targets, batched_inputs):
        if self.objectness_recorder is not None:
            self.record_objectness(outputs, targets, batched_inputs)
        return super().losses(outputs, targets, batched_inputs)

    @torch.no_grad()
    def record_objectness(self, outputs, targets, batched_inputs):
        """Add each image's view to ``objectness_recorder``: per prior, its quality (``objectness_recorder.quality``,
        :func:`joindet.priors.rescore.rescore_quality`) in the augmented image (what the ``rescore`` generator
        computes on the unaugmented one)."""
        prob = outputs["pred_logits"].sigmoid().amax(-1)  # (N, Q)
        boxes = box_convert(outputs["pred_boxes"], "cxcywh", "xyxy")
        for i, (t, x) in enumerate(zip(targets, batched_inputs)):
            missing = [k for k in ("prior_version", "num_priors", "image_id") if k not in x]
            if missing:
                raise ValueError(f"rescore_online records the objectness of each prior, and training input "
                                 f"{x.get('file_name')} lacks {missing} (JoinDetDatasetMapper adds them)")
            priors = box_convert(t["boxes"], "cxcywh", "xyxy")
            quality = rescore_quality(priors, boxes[i], prob[i], self.objectness_recorder.quality)
            self.objectness_recorder.record(x["image_id"], x["prior_version"], x["num_priors"],
                                          x["instances"].gt_prior_index.numpy(), quality.float().cpu().numpy())

    def forward_outputs(self, images, mask):
        out = super().forward_outputs(images, mask)
        out["pred_embed"] = self.embed_head(out["hs"][-1])
        return out

    def prepare_targets(self, batched_inputs, image_sizes):
        targets = super().prepare_targets(batched_inputs, image_sizes)
        for t, x in zip(targets, batched_inputs):
            t["labels"] = torch.zeros_like(t["labels"])
            crops = x["prior_crops"]
            if crops.shape[0] != t["boxes"].shape[0]:
                raise ValueError(f"{crops.shape[0]} prior crops for {t['boxes'].shape[0]} priors "
                                 f"(image {x.get('file_name')})")
            t["embeddings"] = self.crop_embeddings(crops)
            quality = prior_objectness_targets(x, self.objectness_target)
            if quality is not None:
                t["quality"] = quality.to(self.device)
            weight = prior_objectness_targets(x, self.loss_weight)  # the same normalised score, as a loss weight
            if weight is not None:
                t["weight"] = weight.to(self.device)
        return targets

    @staticmethod
    def _level_patch_features(enc, level):
        """One level of the transformer's encoder output ``enc`` as (N, h, w, d) features and the (N, h, w)
        valid mask (True on real patches)."""
        lvl = level % len(enc["spatial_shapes"])
        h, w = enc["spatial_shapes"][lvl].tolist()
        start = int(enc["level_start_index"][lvl])
        n = enc["memory"].shape[0]
        feats = enc["memory"][:, start:start + h * w].reshape(n, h, w, -1)
        valid = ~enc["padding_mask"][:, start:start + h * w].reshape(n, h, w)
        return feats, valid

    @torch.no_grad()
    def encoder_patch_features(self, batched_inputs, level=-1):
        """Encoder output of one feature level, for the eigen attention map.

        Returns features (N, h, w, d), valid mask (N, h, w) bool (True on real patches, False on
        padding) and the resized image sizes [(H, W)] the patches cover.
        """
        images, mask = self.preprocess_image(batched_inputs)
        srcs, masks, pos = self.encode_features(images, mask)
        feats, valid = self._level_patch_features(self.transformer.encode(srcs, masks, pos), level)
        return feats, valid, images.image_sizes

    @torch.no_grad()
    def objectness_predictions(self, batched_inputs, level=None):
        """Every query's class-agnostic prediction of the final decoder layer, in one forward pass.

        Returns a list with, per image, (boxes (Q, 4) XYXY in the image's original pixels (its
        ``height`` / ``width``), objectness (Q,) in [0, 1]); with ``level`` also the encoder's patch
        features of that level, as :meth:`encoder_patch_features` returns them: (preds, feats, valid, sizes).
        """
        images, mask = self.preprocess_image(batched_inputs)
        out = self.forward_outputs(images, mask)
        prob = out["pred_logits"].sigmoid().amax(-1)  # (N, Q)
        boxes = box_convert(out["pred_boxes"], "cxcywh", "xyxy").clamp(0.0, 1.0)  # of each unpadded image
        preds = []
        for i, (x, (h, w)) in enumerate(zip(batched_inputs, images.image_sizes)):
            height, width = x.get("height", h), x.get("width", w)
            preds.append((boxes[i] * boxes.new_tensor([width, height, width, height]), prob[i]))
        if level is None:
            return preds
        feats, valid = self._level_patch_features(out, level)
        return preds, feats, valid, images.image_sizes

    @torch.no_grad()
    def backbone_patch_features(self, batched_inputs, name="res4"):
        """Backbone feature ``name`` as (N, h, w, C) with its valid mask (N, h, w) and the image sizes."""
        images, mask = self.preprocess_image(batched_inputs)
        feats = self.backbone(images.tensor)
        if name not in feats:
            raise ValueError(f"backbone feature {name!r} not available (have {sorted(feats)}); "
                             f"set MODEL.RESNETS.OUT_FEATURES or MODEL.TIMM.OUT_FEATURES")
        f = feats[name]
        valid = ~F.interpolate(mask[None].float(), size=f.shape[-2:]).to(torch.bool)[0]
        return f.permute(0, 2, 3, 1), valid, images.image_sizes
