"""Deformable transformer (encoder + decoder) of Deformable DETR.

Shapes use N = batch, S = sum of H_l * W_l over the L feature levels, Q = queries, d = model width.
"""

import math

import torch
from torch import nn

from .deformable_attention import MSDeformAttn
from .utils import clones, inverse_sigmoid


def _ffn(d_model, d_ffn, dropout):
    return nn.Sequential(
        nn.Linear(d_model, d_ffn),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(d_ffn, d_model),
        nn.Dropout(dropout),
    )


class DeformableEncoderLayer(nn.Module):
    """Multi-scale deformable self-attention + FFN, post-norm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = _ffn(d_model, d_ffn, dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask):
        """src, pos: (N, S, d); reference_points: (N, S, L, 2). Returns (N, S, d)."""
        attn = self.self_attn(
            src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask
        )
        src = self.norm1(src + self.dropout(attn))
        return self.norm2(src + self.ffn(src))


class DeformableEncoder(nn.Module):
    def __init__(self, layer, num_layers):
        super().__init__()
        self.layers = clones(layer, num_layers)

    @staticmethod
    def reference_points(spatial_shapes, valid_ratios, device):
        """Centres of every feature-map cell, normalised by each image's valid area.

        spatial_shapes: (L, 2) int64 (H, W); valid_ratios: (N, L, 2) as (w, h) fractions.
        Returns (N, S, L, 2) normalised (x, y).
        """
        points = []
        for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ys = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            xs = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            points.append(torch.stack((xs, ys), -1))
        ref = torch.cat(points, 1)
        return ref[:, :, None] * valid_ratios[:, None]

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos, padding_mask):
        ref = self.reference_points(spatial_shapes, valid_ratios, src.device)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes, level_start_index, padding_mask)
        return src


class DeformableDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention to the memory, FFN; post-norm."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = _ffn(d_model, d_ffn, dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt,
        query_pos,
        reference_points,
        memory,
        spatial_shapes,
        level_start_index,
        padding_mask,
    ):
        """tgt, query_pos: (N, Q, d); reference_points: (N, Q, L, 2 or 4); memory: (N, S, d)."""
        q = k = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, tgt, need_weights=False)[0]))
        attn = self.cross_attn(
            tgt + query_pos,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            padding_mask,
        )
        tgt = self.norm2(tgt + self.dropout2(attn))
        return self.norm3(tgt + self.ffn(tgt))


class DeformableDecoder(nn.Module):
    """Stack of decoder layers; with ``bbox_embed`` set (box refinement) each layer refines the
    reference boxes predicted by the previous one."""

    def __init__(self, layer, num_layers):
        super().__init__()
        self.layers = clones(layer, num_layers)
        self.num_layers = num_layers
        self.bbox_embed = None  # set by DeformableDETR for iterative box refinement
        self.class_embed = None  # set by DeformableDETR for the two-stage variant

    def forward(
        self,
        tgt,
        reference_points,
        memory,
        spatial_shapes,
        level_start_index,
        valid_ratios,
        query_pos,
        padding_mask,
    ):
        """Returns hidden states (num_layers, N, Q, d) and the reference points each layer used
        (num_layers, N, Q, 2 or 4), normalised to the images' valid areas."""
        output = tgt
        states, references = [], []
        for lid, layer in enumerate(self.layers):
            if reference_points.shape[-1] == 4:
                ref_input = (
                    reference_points[:, :, None]
                    * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
                )
            else:
                ref_input = reference_points[:, :, None] * valid_ratios[:, None]
            output = layer(
                output,
                query_pos,
                ref_input,
                memory,
                spatial_shapes,
                level_start_index,
                padding_mask,
            )
            if self.bbox_embed is not None:
                delta = self.bbox_embed[lid](output)
                if reference_points.shape[-1] == 4:
                    new_ref = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    new_ref = torch.cat(
                        [delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1
                    )
                    new_ref = new_ref.sigmoid()
                reference_points = new_ref.detach()
            states.append(output)
            references.append(reference_points)
        return torch.stack(states), torch.stack(references)


class DeformableTransformer(nn.Module):
    """Encoder + decoder; the query set is learned (one-stage) or the encoder's top proposals (two-stage)."""

    def __init__(
        self,
        d_model=256,
        nhead=8,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dim_feedforward=1024,
        dropout=0.1,
        num_feature_levels=4,
        dec_n_points=4,
        enc_n_points=4,
        two_stage=False,
        two_stage_num_proposals=300,
    ):
        super().__init__()
        self.d_model = d_model
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.encoder = DeformableEncoder(
            DeformableEncoderLayer(
                d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
            ),
            num_encoder_layers,
        )
        self.decoder = DeformableDecoder(
            DeformableDecoderLayer(
                d_model, dim_feedforward, dropout, num_feature_levels, nhead, dec_n_points
            ),
            num_decoder_layers,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    @staticmethod
    def valid_ratios(mask):
        """mask: (N, H, W) bool, True on padding. Returns (N, 2) valid (w, h) fractions."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float()
        valid_w = (~mask[:, 0, :]).sum(1).float()
        return torch.stack([valid_w / w, valid_h / h], -1)

    def proposal_pos_embed(self, proposals):
        """proposals: (N, Q, 4) logits of boxes. Returns (N, Q, 2 * d) sine embedding of the boxes."""
        num_pos_feats = self.d_model // 2
        dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
        dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
        pos = proposals.sigmoid() * 2 * math.pi
        pos = pos[:, :, :, None] / dim_t
        pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)
        return pos

    def encoder_proposals(self, memory, padding_mask, spatial_shapes):
        """One proposal per encoder cell (centre of the cell, size 0.05 * 2^level).

        Returns the projected memory (N, S, d) and the proposals as logits (N, S, 4), +inf where invalid.
        """
        n = memory.shape[0]
        proposals, start = [], 0
        for lvl, (h, w) in enumerate(spatial_shapes.tolist()):
            mask = padding_mask[:, start : start + h * w].view(n, h, w)
            valid_h = (~mask[:, :, 0]).sum(1).float()
            valid_w = (~mask[:, 0, :]).sum(1).float()
            ys, xs = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=memory.device),
                torch.arange(w, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            scale = torch.stack([valid_w, valid_h], -1).view(n, 1, 1, 2)
            grid = (torch.stack([xs, ys], -1)[None] + 0.5) / scale
            wh = torch.full_like(grid, 0.05 * (2.0**lvl))
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
            start += h * w
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        invalid = padding_mask.unsqueeze(-1) | ~valid
        proposals = proposals.masked_fill(invalid, float("inf"))
        output = memory.masked_fill(invalid, 0.0)
        return self.enc_output_norm(self.enc_output(output)), proposals

    def encode(self, srcs, masks, pos_embeds):
        """Run the encoder. srcs, pos_embeds: lists of (N, d, H_l, W_l); masks: list of (N, H_l, W_l)
        bool (True = padding).

        Returns a dict with ``memory`` (N, S, d), ``spatial_shapes`` (L, 2) int64, ``level_start_index``
        (L,), ``padding_mask`` (N, S) bool and ``valid_ratios`` (N, L, 2).
        """
        src_flat, mask_flat, pos_flat, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            shapes.append(src.shape[-2:])
            src_flat.append(src.flatten(2).transpose(1, 2))
            mask_flat.append(mask.flatten(1))
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flat = torch.cat(src_flat, 1)
        mask_flat = torch.cat(mask_flat, 1)
        pos_flat = torch.cat(pos_flat, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flat.device)
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1])
        )
        valid_ratios = torch.stack([self.valid_ratios(m) for m in masks], 1)
        memory = self.encoder(
            src_flat, spatial_shapes, level_start_index, valid_ratios, pos_flat, mask_flat
        )
        return {
            "memory": memory,
            "spatial_shapes": spatial_shapes,
            "level_start_index": level_start_index,
            "padding_mask": mask_flat,
            "valid_ratios": valid_ratios,
        }

    def forward(self, srcs, masks, pos_embeds, query_embed=None):
        """srcs, pos_embeds: lists of (N, d, H_l, W_l); masks: list of (N, H_l, W_l) bool (True = padding);
        query_embed: (Q, 2d) learned queries (one-stage only).

        Returns :meth:`encode`'s dict plus ``hs`` (layers, N, Q, d), ``init_reference`` (N, Q, 2 or 4),
        ``inter_references`` (layers, N, Q, 2 or 4), and for two-stage ``enc_outputs_class``
        (N, S, C) and ``enc_outputs_coord_unact`` (N, S, 4).
        """
        if not self.two_stage and query_embed is None:
            raise ValueError("the one-stage transformer needs query_embed")
        out = self.encode(srcs, masks, pos_embeds)
        memory, mask_flat = out["memory"], out["padding_mask"]
        spatial_shapes, level_start_index = out["spatial_shapes"], out["level_start_index"]
        valid_ratios = out["valid_ratios"]
        n = memory.shape[0]
        if self.two_stage:
            output_memory, proposals = self.encoder_proposals(memory, mask_flat, spatial_shapes)
            num_layers = self.decoder.num_layers
            enc_class = self.decoder.class_embed[num_layers](output_memory)
            enc_coord_unact = self.decoder.bbox_embed[num_layers](output_memory) + proposals
            topk = min(self.two_stage_num_proposals, enc_class.shape[1])
            topk_idx = torch.topk(enc_class[..., 0], topk, dim=1)[1]
            topk_coords = torch.gather(
                enc_coord_unact, 1, topk_idx.unsqueeze(-1).repeat(1, 1, 4)
            ).detach()
            reference_points = topk_coords.sigmoid()
            pos_trans = self.pos_trans_norm(self.pos_trans(self.proposal_pos_embed(topk_coords)))
            query_pos, tgt = torch.split(pos_trans, self.d_model, dim=2)
            out.update(enc_outputs_class=enc_class, enc_outputs_coord_unact=enc_coord_unact)
        else:
            query_pos, tgt = torch.split(query_embed, self.d_model, dim=1)
            query_pos = query_pos.unsqueeze(0).expand(n, -1, -1)
            tgt = tgt.unsqueeze(0).expand(n, -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()
        hs, inter_references = self.decoder(
            tgt,
            reference_points,
            memory,
            spatial_shapes,
            level_start_index,
            valid_ratios,
            query_pos,
            mask_flat,
        )
        out.update(hs=hs, init_reference=reference_points, inter_references=inter_references)
        return out
