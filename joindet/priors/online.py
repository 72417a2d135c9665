"""The objectness the model gives its priors during training, collected for the ``rescore_online`` refresh.

A training step already computes, for every augmented image of the batch, the decoder's boxes and
objectness; :class:`OnlineObjectness` keeps, per prior of the bank version the view was drawn from, the
latest view's score of the prior (``JOINDET.REFRESH.RESCORE_QUALITY``, :mod:`joindet.priors.rescore`) -- the
score the ``rescore`` generator computes with a forward pass of its own over the unaugmented images, from the latest model
that saw the prior (a mean over the views since the last refresh would mix in the scores of a model up to a
whole refresh period younger). The refresh then
costs no forward pass (``joindet.priors.refresh.OnlineRescoreGenerator``).

Records are per process (each scores the images its data loader served); the generator merges them across
processes with one ``all_gather`` of small per-image float arrays (no boxes).
"""
from typing import Dict

import numpy as np

from detectron2.utils import comm

from .rescore import DEFAULT_RESCORE_QUALITY, check_rescore_quality

__all__ = ["OnlineObjectness"]


class OnlineObjectness:
    """The latest view's quality per prior of each image seen by this process, for the bank version of the view.

    ``record(image_id, version, num_priors, prior_index, quality)`` adds one view: ``prior_index`` (k,)
    the positions in the image's bank entry of the priors the view kept (the augmentation may drop
    some), ``quality`` (k,) their scores, ``num_priors`` the length of the entry. A view of another
    version than the image's earlier views replaces them (its indices refer to another entry).
    ``quality``: how the model scores a prior (one of :data:`joindet.priors.rescore.RESCORE_QUALITIES`;
    the model reads it when it records a step).
    """

    def __init__(self, quality=DEFAULT_RESCORE_QUALITY):
        self.quality = check_rescore_quality(quality)
        self._views: Dict[int, tuple] = {}  # image_id -> (version, quality (n,) float32, NaN where no view yet)

    def __len__(self):
        return len(self._views)

    def record(self, image_id, version, num_priors, prior_index, quality):
        prior_index = np.asarray(prior_index, dtype=np.int64).reshape(-1)
        quality = np.asarray(quality, dtype=np.float32).reshape(-1)
        if prior_index.shape != quality.shape:
            raise ValueError(f"image {image_id}: {prior_index.size} prior indices for {quality.size} scores")
        if prior_index.size and (prior_index.min() < 0 or prior_index.max() >= num_priors):
            raise ValueError(f"image {image_id}: prior indices {prior_index.tolist()} outside its {num_priors} priors")
        entry = self._views.get(image_id)
        if entry is None or entry[0] != version or entry[1].size != num_priors:
            entry = (int(version), np.full(num_priors, np.nan, np.float32))
            self._views[image_id] = entry
        entry[1][prior_index] = quality

    def gathered(self, version) -> Dict[int, np.ndarray]:
        """image_id -> (n,) float32 latest quality of each prior in the views of ``version`` of every process
        (one ``all_gather``; NaN for a prior no view kept); images without such a view are left out. An image
        seen by several processes (a sampler that repeats images) takes each prior from the process that
        has it, the higher rank winning."""
        local = {i: q for i, (v, q) in self._views.items() if v == version}
        parts = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        out = {}
        for part in parts:
            for image_id, quality in part.items():
                if image_id in out and out[image_id].size == quality.size:
                    quality = np.where(np.isnan(quality), out[image_id], quality)
                out[image_id] = quality
        return out

    def clear(self):
        self._views.clear()
