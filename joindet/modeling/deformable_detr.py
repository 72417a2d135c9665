"""Deformable DETR as a Detectron2 meta-architecture."""

import math

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_convert

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances

from .criterion import SetCriterion, build_weight_dict
from .deformable_transformer import DeformableTransformer
from .matcher import HungarianMatcher
from .position_encoding import PositionEmbeddingSine
from .utils import MLP, clones, inverse_sigmoid

__all__ = ["DeformableDETR"]


def _input_projections(backbone_shapes, in_features, num_levels, d_model):
    """1x1 conv + GroupNorm per backbone level, then stride-2 3x3 convs for the extra levels."""
    projs = [
        nn.Sequential(nn.Conv2d(backbone_shapes[f].channels, d_model, 1), nn.GroupNorm(32, d_model))
        for f in in_features
    ]
    in_ch = backbone_shapes[in_features[-1]].channels
    for _ in range(num_levels - len(in_features)):
        projs.append(
            nn.Sequential(
                nn.Conv2d(in_ch, d_model, 3, stride=2, padding=1), nn.GroupNorm(32, d_model)
            )
        )
        in_ch = d_model
    for proj in projs:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.constant_(proj[0].bias, 0)
    return nn.ModuleList(projs)


@META_ARCH_REGISTRY.register()
class DeformableDETR(nn.Module):
    """Deformable DETR (Zhu et al., ICLR 2021) on a Detectron2 backbone.

    Input: Detectron2's list of dicts (``image`` (3, H, W) uint8 in ``input_format``, ``instances`` with
    ``gt_boxes`` XYXY and ``gt_classes`` in training, optional ``height``/``width``).
    Training returns a dict of weighted losses; inference returns ``[{"instances": Instances}]`` with
    the top ``num_detections`` boxes (XYXY, original image coordinates), ``scores`` and ``pred_classes``.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone,
        in_features,
        transformer,
        num_classes,
        num_queries,
        criterion,
        pixel_mean,
        pixel_std,
        aux_loss=True,
        with_box_refine=False,
        two_stage=False,
        num_detections=100,
        size_divisibility=32,
    ):
        super().__init__()
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1, got {num_queries}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if two_stage and not with_box_refine:
            raise ValueError("two_stage=True needs with_box_refine=True (the encoder proposals are refined by the "
                             "decoder's per-layer box heads): set MODEL.DEFORMABLE_DETR.WITH_BOX_REFINE True")
        self.backbone = backbone
        self.in_features = list(in_features)
        self.transformer = transformer
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.criterion = criterion
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage
        self.num_detections = num_detections
        self.size_divisibility = size_divisibility
        d_model = transformer.d_model
        num_levels = transformer.level_embed.shape[0]

        self.input_proj = _input_projections(
            backbone.output_shape(), self.in_features, num_levels, d_model
        )
        self.position_embedding = PositionEmbeddingSine(d_model // 2)
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, d_model * 2)

        # one head per decoder layer (+1 for the encoder proposals when two-stage); shared unless refining
        num_pred = transformer.decoder.num_layers + (1 if two_stage else 0)
        class_embed = nn.Linear(d_model, num_classes)
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))
        bbox_embed = MLP(d_model, d_model, 4, 3)
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        if with_box_refine:
            self.class_embed = clones(class_embed, num_pred)
            self.bbox_embed = clones(bbox_embed, num_pred)
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            transformer.decoder.bbox_embed = self.bbox_embed
        else:
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
        if two_stage:
            transformer.decoder.class_embed = self.class_embed
            for box_embed in self.bbox_embed:
                nn.init.constant_(box_embed.layers[-1].bias[2:], 0.0)

        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DEFORMABLE_DETR
        backbone = build_backbone(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
        missing = [f for f in d.IN_FEATURES if f not in backbone.output_shape()]
        if missing:
            raise ValueError(
                f"MODEL.DEFORMABLE_DETR.IN_FEATURES {missing} are not produced by the backbone "
                f"(it produces {sorted(backbone.output_shape())}; set MODEL.RESNETS.OUT_FEATURES or "
                "MODEL.TIMM.OUT_FEATURES)"
            )
        transformer = DeformableTransformer(
            d_model=d.HIDDEN_DIM,
            nhead=d.NHEADS,
            num_encoder_layers=d.ENC_LAYERS,
            num_decoder_layers=d.DEC_LAYERS,
            dim_feedforward=d.DIM_FEEDFORWARD,
            dropout=d.DROPOUT,
            num_feature_levels=d.NUM_FEATURE_LEVELS,
            dec_n_points=d.DEC_N_POINTS,
            enc_n_points=d.ENC_N_POINTS,
            two_stage=d.TWO_STAGE,
            two_stage_num_proposals=d.NUM_QUERIES,
        )
        return {
            "backbone": backbone,
            "in_features": d.IN_FEATURES,
            "transformer": transformer,
            "num_classes": d.NUM_CLASSES,
            "num_queries": d.NUM_QUERIES,
            "criterion": cls.build_criterion(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "aux_loss": d.DEEP_SUPERVISION,
            "with_box_refine": d.WITH_BOX_REFINE,
            "two_stage": d.TWO_STAGE,
            "num_detections": d.NUM_DETECTIONS,
            "size_divisibility": d.SIZE_DIVISIBILITY,
        }

    @classmethod
    def build_criterion(cls, cfg, extra_weights=None, *, num_classes=None, criterion_class=SetCriterion,
                        **criterion_kwargs):
        """The matcher, loss weights and criterion of ``MODEL.DEFORMABLE_DETR`` (``num_classes``: that of the
        class head, default ``NUM_CLASSES``; ``extra_weights``: weights of the losses a subclass adds;
        ``criterion_kwargs``: further arguments of ``criterion_class``)."""
        d = cfg.MODEL.DEFORMABLE_DETR
        matcher = HungarianMatcher(
            cost_class=d.COST_CLASS,
            cost_bbox=d.COST_BBOX,
            cost_giou=d.COST_GIOU,
            focal_alpha=d.FOCAL_ALPHA,
            focal_gamma=d.FOCAL_GAMMA,
        )
        weight_dict = build_weight_dict(
            d.CLASS_WEIGHT,
            d.L1_WEIGHT,
            d.GIOU_WEIGHT,
            num_aux=d.DEC_LAYERS - 1 if d.DEEP_SUPERVISION else 0,
            two_stage=d.TWO_STAGE,
            extra=extra_weights,
        )
        return criterion_class(
            d.NUM_CLASSES if num_classes is None else num_classes,
            matcher,
            weight_dict,
            focal_alpha=d.FOCAL_ALPHA,
            focal_gamma=d.FOCAL_GAMMA,
            **criterion_kwargs,
        )

    @property
    def device(self):
        return self.pixel_mean.device

    # ------------------------------------------------------------------ forward
    def preprocess_image(self, batched_inputs):
        """Normalise and pad. Returns an ImageList and the padding mask (N, H, W) bool (True = padding)."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        images = ImageList.from_tensors(images, self.size_divisibility)
        n, _, h, w = images.tensor.shape
        mask = torch.ones((n, h, w), dtype=torch.bool, device=self.device)
        for i, (ih, iw) in enumerate(images.image_sizes):
            mask[i, :ih, :iw] = False
        return images, mask

    def encode_features(self, images, mask):
        """Backbone + input projections. Returns lists (per level) of (N, d, H_l, W_l) features,
        (N, H_l, W_l) masks and (N, d, H_l, W_l) position embeddings."""
        features = self.backbone(images.tensor)
        srcs, masks, pos = [], [], []
        x = None
        for lvl, proj in enumerate(self.input_proj):
            if lvl < len(self.in_features):
                x = features[self.in_features[lvl]]
                src = proj(x)
            else:
                src = proj(x if lvl == len(self.in_features) else srcs[-1])
            m = F.interpolate(mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            srcs.append(src)
            masks.append(m)
            pos.append(self.position_embedding(m).to(src.dtype))
        return srcs, masks, pos

    def forward_outputs(self, images, mask):
        """Run the detector. Returns the transformer's dict plus ``pred_logits`` (N, Q, C),
        ``pred_boxes`` (N, Q, 4) normalised cxcywh, ``aux_outputs`` and (two-stage) ``enc_outputs``.
        """
        srcs, masks, pos = self.encode_features(images, mask)
        query_embed = None if self.two_stage else self.query_embed.weight
        out = self.transformer(srcs, masks, pos, query_embed)
        hs = out["hs"]
        logits, boxes = [], []
        for lvl in range(hs.shape[0]):
            reference = out["init_reference"] if lvl == 0 else out["inter_references"][lvl - 1]
            reference = inverse_sigmoid(reference)
            logits.append(self.class_embed[lvl](hs[lvl]))
            delta = self.bbox_embed[lvl](hs[lvl])
            if reference.shape[-1] == 4:
                delta = delta + reference
            else:
                delta = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            boxes.append(delta.sigmoid())
        out["pred_logits"], out["pred_boxes"] = logits[-1], boxes[-1]
        if self.aux_loss:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])
            ]
        if self.two_stage:
            out["enc_outputs"] = {
                "pred_logits": out["enc_outputs_class"],
                "pred_boxes": out["enc_outputs_coord_unact"].sigmoid(),
            }
        return out

    def forward(self, batched_inputs):
        images, mask = self.preprocess_image(batched_inputs)
        out = self.forward_outputs(images, mask)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images.image_sizes)
            return self.losses(out, targets, batched_inputs)
        return self.postprocess(out, batched_inputs, images.image_sizes)

    def prepare_targets(self, batched_inputs, image_sizes):
        """Instances (XYXY absolute, in the resized image) -> list of dicts with ``labels`` (n,) int64
        and ``boxes`` (n, 4) cxcywh normalised by the image's own (unpadded) size."""
        targets = []
        for x, (h, w) in zip(batched_inputs, image_sizes):
            inst = x["instances"].to(self.device)
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_convert(inst.gt_boxes.tensor / scale, "xyxy", "cxcywh")
            targets.append({"labels": inst.gt_classes.long(), "boxes": boxes})
        return targets

    def losses(self, outputs, targets, batched_inputs):
        """Weighted loss dict (Detectron2 sums its values)."""
        return self.criterion.weighted(self.criterion(outputs, targets))

    def postprocess(self, outputs, batched_inputs, image_sizes):
        """Top-k (over queries x classes) detections per image, as Instances in original coordinates."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        n, q, c = logits.shape
        k = min(self.num_detections, q * c)
        prob = logits.sigmoid().flatten(1)
        scores, idx = prob.topk(k, dim=1)
        query_idx = torch.div(idx, c, rounding_mode="floor")
        labels = idx % c
        boxes = torch.gather(
            box_convert(boxes, "cxcywh", "xyxy"), 1, query_idx.unsqueeze(-1).repeat(1, 1, 4)
        )
        results = []
        for i, (x, (h, w)) in enumerate(zip(batched_inputs, image_sizes)):
            res = Instances((h, w))
            scale = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
            res.pred_boxes = Boxes(boxes[i] * scale)
            res.pred_boxes.clip((h, w))
            res.scores = scores[i]
            res.pred_classes = labels[i]
            height, width = x.get("height", h), x.get("width", w)
            results.append({"instances": detector_postprocess(res, height, width)})
        return results
