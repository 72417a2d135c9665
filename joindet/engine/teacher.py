"""A slowly updated copy of the model that prior refreshes read instead of the model being trained.

Self-training from the model's own output risks confirming its own choices: the boxes it finds at a refresh
become its targets, which it then finds again. A teacher whose weights are an exponential moving average
(EMA) of the trained model's (Mean Teacher, Tarvainen & Valpola 2017; HASSOD uses one instead of rounds of
self-training) changes slowly and averages out the noise of the last steps. With
``JOINDET.REFRESH.TEACHER_MOMENTUM`` m > 0 the refresh hook keeps one and hands it to the refresh
generator; after every training step

    teacher <- m_t * teacher + (1 - m_t) * model,   m_t = min(m, (1 + t) / (10 + t))

(computed as ``teacher + (1 - m_t) * (model - teacher)``, so a frozen weight stays bit-identical)

for each floating-point parameter and buffer (other buffers, such as counters, are copied), t counting the
updates from 0. The ramp of m_t is Mean Teacher's: early on, while the model moves fast, the teacher follows it
closely instead of averaging in the random initial heads. The teacher starts as a copy of the model when
training starts, is never trained, stays in eval mode, and is part of the checkpoint (``state_dict``), so a
resumed run continues with the teacher it had.
"""
import copy
import logging
import numbers
from typing import Optional

import torch
from torch import nn

__all__ = ["EMATeacher", "teacher_momentum_at"]

logger = logging.getLogger("joindet")

RAMP_OFFSET = 10  # m_t = min(m, (1 + t) / (RAMP_OFFSET + t)): Mean Teacher's warm-up of the momentum


def teacher_momentum_at(momentum: float, num_updates: int) -> float:
    """The momentum of update number ``num_updates`` (from 0): ``min(momentum, (1 + t) / (10 + t))``."""
    return min(float(momentum), (1.0 + num_updates) / (RAMP_OFFSET + num_updates))


class EMATeacher:
    """The EMA copy of a model (see the module's docstring).

    ``update(model)`` after each training step (the first call, or :meth:`start`, copies the model);
    ``model``: the teacher (an ``nn.Module`` in eval mode without gradients; None before the first copy).
    """

    def __init__(self, momentum: float):
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 < momentum < 1.0:
            raise ValueError(f"the teacher momentum must be a number in (0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.model: Optional[nn.Module] = None
        self.num_updates = 0
        self._pending_state = None  # a checkpoint's teacher, loaded before the teacher existed

    def start(self, model: nn.Module):
        """Copy ``model`` as the teacher (unless it exists), then load a checkpoint's teacher if one came first."""
        if self.model is None:
            self.model = copy.deepcopy(model).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self._load(state)

    @torch.no_grad()
    def update(self, model: nn.Module):
        """One EMA step towards ``model``'s current weights (the teacher is created on the first call)."""
        self.start(model)
        m = teacher_momentum_at(self.momentum, self.num_updates)
        student = model.state_dict()
        for name, t in self.model.state_dict().items():
            s = student[name].detach()
            if t.dtype.is_floating_point:
                t.lerp_(s.to(t.dtype), 1.0 - m)  # t + (1 - m)(s - t): a weight the model does not change stays exact
            else:
                t.copy_(s)
        self.num_updates += 1

    # ------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "num_updates": self.num_updates,
                "model": None if self.model is None else {k: v.clone() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict):
        if self.model is None:  # a checkpoint is read before training starts: load it when the copy exists
            self._pending_state = state
        else:
            self._load(state)

    def _load(self, state):
        if state.get("momentum") != self.momentum:
            logger.warning("The checkpoint's teacher was kept with momentum %s; this run uses %s",
                           state.get("momentum"), self.momentum)
        self.num_updates = int(state["num_updates"])
        if state["model"] is not None:
            try:
                self.model.load_state_dict(state["model"])
            except RuntimeError as e:
                raise ValueError(f"the checkpoint's teacher does not fit the model: {e}") from e
