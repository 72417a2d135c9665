"""The objectness the model gives its priors during training, collected for the ``rescore_online`` refresh.

A training step already computes, for every augmented image of the batch, the decoder's boxes and
objectness; :class:`OnlineObjectness` keeps, per prior of the bank version the view was drawn from, the
mean over the views of ``max over queries of objectness x IoU(query box, prior box)`` -- the score the
``rescore`` generator computes with a forward pass of its own over the unaugmented images. The refresh then
costs no forward pass (``joindet.priors.refresh.OnlineRescoreGenerator``).

Records are per process (each scores the images its data loader served); the generator merges them across
processes with one ``all_gather`` of small per-image float arrays (no boxes).
"""
from typing import Dict

import numpy as np

from detectron2.utils import comm

__all__ = ["OnlineObjectness"]


class OnlineObjectness:
    """Mean quality per prior of each image seen by this process, for the bank version of each view.

    ``record(image_id, version, num_priors, prior_index, quality)`` adds one view: ``prior_index`` (k,)
    the positions in the image's bank entry of the priors the view kept (the augmentation may drop
    some), ``quality`` (k,) their scores, ``num_priors`` the length of the entry. A view of another
    version than the image's earlier views replaces them (its indices refer to another entry).
    """

    def __init__(self):
        self._views: Dict[int, tuple] = {}  # image_id -> (version, sums (n,) float64, counts (n,) int64)

    def __len__(self):
        return len(self._views)

    def record(self, image_id, version, num_priors, prior_index, quality):
        prior_index = np.asarray(prior_index, dtype=np.int64).reshape(-1)
        quality = np.asarray(quality, dtype=np.float64).reshape(-1)
        if prior_index.shape != quality.shape:
            raise ValueError(f"image {image_id}: {prior_index.size} prior indices for {quality.size} scores")
        if prior_index.size and (prior_index.min() < 0 or prior_index.max() >= num_priors):
            raise ValueError(f"image {image_id}: prior indices {prior_index.tolist()} outside its {num_priors} priors")
        entry = self._views.get(image_id)
        if entry is None or entry[0] != version or entry[1].size != num_priors:
            entry = (int(version), np.zeros(num_priors), np.zeros(num_priors, np.int64))
            self._views[image_id] = entry
        np.add.at(entry[1], prior_index, quality)
        np.add.at(entry[2], prior_index, 1)

    def gathered_means(self, version) -> Dict[int, np.ndarray]:
        """image_id -> (n,) float32 mean quality of each prior over the views of ``version`` of every process
        (one ``all_gather``; NaN for a prior no view kept); images without such a view are left out."""
        local = {i: (s, c) for i, (v, s, c) in self._views.items() if v == version}
        parts = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        sums, counts = {}, {}
        for part in parts:
            for image_id, (s, c) in part.items():
                if image_id in sums and sums[image_id].size == s.size:
                    sums[image_id] = sums[image_id] + s
                    counts[image_id] = counts[image_id] + c
                else:
                    sums[image_id], counts[image_id] = s, c
        with np.errstate(invalid="ignore", divide="ignore"):
            return {i: np.where(counts[i] > 0, sums[i] / np.maximum(counts[i], 1), np.nan).astype(np.float32)
                    for i in sums}

    def clear(self):
        self._views.clear()
