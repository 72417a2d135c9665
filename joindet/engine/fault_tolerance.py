"""
What makes an interrupted training continue as if it had not stopped.

A checkpoint (Detectron2's ``model_<iter>.pth``, written by ``PeriodicCheckpointer``) holds the
weights, the optimizer, the lr scheduler, the iteration and every hook's state: with JoinDet's hooks
that includes the prior-bank version in use (``PriorRefreshHook``) and, from :class:`RNGStateHook`, the
random-number generators. With :class:`ResumableTrainingSampler` the data stream continues where it
stood. So a run killed at any point and resumed with ``--resume`` from its last checkpoint replays the
same iterations on the same images with the same augmentations and reaches the same weights and the
same bank versions as an uninterrupted run (CPU, ``DATALOADER.NUM_WORKERS 0``; with loader workers the
image order is the same but each worker's augmentation seed is drawn anew).

:class:`PreemptionHook` turns a SIGTERM (what schedulers send before they take a node back) into a
checkpoint at the end of the current iteration and a clean exit (status 0): :class:`TrainingPreempted`
ends the training loop and ``train_net.py`` returns normally.
"""
import itertools
import logging
import os
import random
import signal
import threading

import numpy as np
import torch

from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["ResumableTrainingSampler", "RNGStateHook", "PreemptionHook", "TrainingPreempted",
           "capture_rng_state", "restore_rng_state"]

logger = logging.getLogger("joindet")


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's ``TrainingSampler`` (the same infinite, seeded stream of shuffled indices, each rank
    taking every ``world_size``-th) that can start ``skip`` indices into this rank's stream: a run resumed
    after ``n`` iterations of ``b`` images per process calls ``skip(n * b)`` and reads the images the
    uninterrupted run would have read. Indices are skipped, not images: it costs one ``randperm`` per epoch."""

    def __init__(self, size, shuffle=True, seed=None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._skip = 0

    def skip(self, num_indices):
        """Start this rank's stream ``num_indices`` indices in (call before the loader is iterated)."""
        if isinstance(num_indices, bool) or not isinstance(num_indices, int) or num_indices < 0:
            raise ValueError(f"num_indices must be an integer >= 0, got {num_indices!r}")
        self._skip = num_indices

    def __iter__(self):
        start = self._rank + self._skip * self._world_size
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)


# --------------------------------------------------------------------------- random state
def capture_rng_state():
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global generators, as plain values and
    tensors (a checkpoint loads them with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Set the global generators to ``state`` (from :func:`capture_rng_state`)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStateHook(HookBase):
    """Puts the random-number generators into the checkpoint and restores them on resume.

    The state is the one at the moment of the checkpoint (``PeriodicCheckpointer`` asks every hook for its
    ``state_dict``). On resume it is restored in ``before_train``, so the next iteration sees exactly the
    random numbers the uninterrupted run saw. Keep this hook after the other hooks: their ``before_train``
    (e.g. a prior-quality evaluation) runs before the state is put back. The train loader must not draw
    from the global generators when it starts (``build_resumable_train_loader`` gives it its own).
    """

    def __init__(self):
        self._pending = None

    def state_dict(self):
        return {"rng": capture_rng_state()}

    def load_state_dict(self, state):
        self._pending = state["rng"]

    def before_train(self):
        if self._pending is None:
            return
        restore_rng_state(self._pending)
        self._pending = None
        logger.info("Restored the random-number generators of the checkpoint")


# --------------------------------------------------------------------------- preemption
class TrainingPreempted(BaseException):
    """Training stopped on SIGTERM after saving a checkpoint (a BaseException so that Detectron2's training
    loop does not log it as a failure; ``train_net.py`` catches it and exits with status 0)."""

    def __init__(self, iteration, checkpoint):
        super().__init__(f"preempted at iteration {iteration}; checkpoint {checkpoint}")
        self.iteration = iteration
        self.checkpoint = checkpoint


class PreemptionHook(HookBase):
    """On SIGTERM: finish the current iteration, save ``model_<iter>.pth`` (with every hook's state, so the
    prior-bank version in use), then stop with :class:`TrainingPreempted`.

    The signal handler only sets a flag (nothing unsafe runs inside it). With several processes the flag is
    combined over all of them after every step (one small all-reduce), so every process stops after the
    same iteration even when only one of them received the signal. Put this hook last: the checkpoint then
    follows the iteration's refresh and evaluation.
    """

    def __init__(self, checkpointer, signals=(signal.SIGTERM,)):
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self._requested = False
        self._previous = {}

    def _handle(self, signum, frame):
        self._requested = True

    def before_train(self):
        if threading.current_thread() is not threading.main_thread():
            logger.warning("PreemptionHook: not in the main thread, SIGTERM cannot be handled")
            return
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)

    def after_train(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _stop_requested(self):
        if comm.get_world_size() == 1:
            return self._requested
        flag = torch.tensor([1 if self._requested else 0], dtype=torch.int32)
        if torch.distributed.get_backend() == "nccl":
            flag = flag.cuda()
        torch.distributed.all_reduce(flag)
        return bool(flag.item())

    def after_step(self):
        if not self._stop_requested():
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self.checkpointer.save(name, iteration=iteration)  # only the main process writes
        comm.synchronize()
        path = os.path.join(self.checkpointer.save_dir, f"{name}.pth")
        logger.warning("SIGTERM: saved %s after iteration %d; continue with --resume", path, iteration)
        raise TrainingPreempted(iteration, path)
