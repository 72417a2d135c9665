"""The hook that creates version 0 of the priors and refreshes them every ``period`` iterations."""
import gc
import json
import logging
import time

import numpy as np

from detectron2.config import configurable
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..evaluation.prior_quality import evaluate_priors, format_prior_quality_table
from ..priors import defaults as D
from ..priors.box_smooth import BoxSmoothSettings, mean_best_iou, merge_refresh
from ..priors.generation import priors_to_arrays, publish_version, shard
from ..priors.refresh import build_refresh_generator, refresh_generator_name
from ..priors.sources import build_prior_source_from_cfg
from ..priors.version0 import load_or_compute_version0
from ..utils.atomic import write_json_atomic
from ..utils.memory import release_free_heap
from .common import unwrap_model
from .teacher import EMATeacher

__all__ = ["PriorRefreshHook"]

logger = logging.getLogger("joindet")


class PriorRefreshHook(HookBase):
    """Keeps the prior bank and the data loader's supervision up to date.

    - ``before_train``: tidy up the bank after an interrupted write (``PriorBank.recover``); unless a
      checkpoint restored the version in use, make sure version 0 exists
      (computed by ``init_source``, or reused when the bank holds version 0 of the same settings).
    - every ``period`` iterations (0 = never): the current priors of every image from ``generator`` (a
      refresh generator, :mod:`joindet.priors.refresh`; each process its shard), smoothed with the version
      in use by the Box Smooth Module of ``smooth`` (a :class:`BoxSmoothSettings`; an image for which the
      generator finds nothing keeps its priors),
      written by each process as its shard of the next version, which the main process commits
      (``generation.publish_version``: no process gathers the priors), then made active in every process (and
      so in their data-loader workers).
    - the version in use is part of the checkpoint (``state_dict``), so a resumed run continues with
      exactly the supervision it had.
    - statistics of each version go to the event storage (``priors/*``); with ``eval_dicts`` (a dataset
      with boxes for the same image ids) the prior quality too, a table in the log, and the quality of every
      version of this run in ``<bank>/prior_quality.json``.
    - a generator that reads the training steps instead of running the model (``rescore_online``: it has
      ``attach(model)``) is wired to the model by ``before_train``.
    - with ``teacher_momentum`` m > 0 the generator reads a teacher instead of the model being trained: an
      exponential moving average of the model's weights, updated after every step (:mod:`.teacher`) and
      checkpointed with the version in use.

    Built from a yacs config by ``PriorRefreshHook(cfg, active_priors=..., dataset_dicts=..., mapper=...)``
    (``from_config``: the version-0 source and the refresh generator from their registries, the Box Smooth
    settings, the period ``JOINDET.UPDATE_PERIOD_ITERS``, the teacher ``JOINDET.REFRESH.TEACHER_MOMENTUM``, the
    prior-quality set ``JOINDET.PRIORS.EVAL_DATASET``),
    in a LazyConfig by ``L(PriorRefreshHook)(init_source=L(...)(...), generator=L(...)(...), ...)`` whose
    ``active_priors`` and ``dataset_dicts`` the engine supplies (objects a config does not hold).
    """

    @configurable
    def __init__(self, *, active_priors, dataset_dicts, dataset_name, init_source, generator, period=D.REFRESH_PERIOD,
                 smooth=BoxSmoothSettings(), teacher_momentum=D.REFRESH_TEACHER_MOMENTUM, eval_dicts=None,
                 stats_sample=2000):
        if not isinstance(smooth, BoxSmoothSettings):
            raise ValueError(f"smooth must be a BoxSmoothSettings, got {type(smooth).__name__}")
        if isinstance(period, bool) or int(period) != period or period < 0:
            raise ValueError(f"the refresh period must be an integer >= 0 (iterations; 0 = never), got {period!r}")
        self.active = active_priors
        self.dataset_dicts = list(dataset_dicts)
        self.dataset_name = dataset_name
        self.init_source = init_source
        self.generator = generator
        self.period = int(period)
        if teacher_momentum and getattr(generator, "attach", None) is not None:
            raise ValueError(f"a teacher (momentum {teacher_momentum}) is for generators that run a model; "
                             f"{refresh_generator_name(generator)} reads the training steps")
        self.teacher = EMATeacher(teacher_momentum) if teacher_momentum else None
        self.smooth = smooth
        self.eval_dicts = eval_dicts
        self.stats_sample = stats_sample
        self.quality = []  # [(label, metrics dict)] of every version evaluated in this run

    @classmethod
    def from_config(cls, cfg, *, active_priors, dataset_dicts, mapper):
        """``mapper``: the test-time mapper the version-0 source and the refreshes read images with."""
        eval_name = cfg.JOINDET.PRIORS.EVAL_DATASET
        return {
            "active_priors": active_priors,
            "dataset_dicts": dataset_dicts,
            "dataset_name": "+".join(cfg.DATASETS.TRAIN),
            "init_source": build_prior_source_from_cfg(cfg, mapper),
            "generator": build_refresh_generator(cfg, mapper),
            "period": cfg.JOINDET.UPDATE_PERIOD_ITERS,
            "teacher_momentum": cfg.JOINDET.REFRESH.TEACHER_MOMENTUM,
            "smooth": BoxSmoothSettings(cfg),
            "eval_dicts": DatasetCatalog.get(eval_name) if eval_name else None,
        }

    @property
    def generator_name(self):
        return refresh_generator_name(self.generator)

    # ------------------------------------------------------------------ checkpointed state
    def state_dict(self):
        state = {"version": int(self.active.version)}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        return state

    def load_state_dict(self, state):
        if self.teacher is not None:
            if "teacher" in state:
                self.teacher.load_state_dict(state["teacher"])
            else:
                logger.warning("The checkpoint has no teacher (it was trained without one): the teacher starts "
                               "as a copy of the loaded model")
        version = int(state["version"])
        if version >= 0:
            self.active.set_version(version)  # FileNotFoundError when the bank lost that version
            logger.info("Resumed with prior bank version %d (%s)", version, self.active.bank.root)

    # ------------------------------------------------------------------ hook
    def before_train(self):
        attach = getattr(self.generator, "attach", None)
        if attach is not None:  # a generator that reads the training steps (rescore_online)
            attach(unwrap_model(self.trainer.model))
        if self.teacher is not None:
            self.teacher.start(unwrap_model(self.trainer.model))
        if comm.is_main_process():  # the main process is the bank's only writer
            for line in self.active.bank.recover():
                logger.warning("Prior bank %s: %s", self.active.bank.root, line)
        comm.synchronize()
        if self.active.version < 0:
            self._ensure_version0()
        self._log_version(self.active.current(), previous=None)

    def after_step(self):
        if self.teacher is not None:
            self.teacher.update(unwrap_model(self.trainer.model))
        next_iter = self.trainer.iter + 1
        if self.period > 0 and next_iter % self.period == 0 and next_iter < self.trainer.max_iter:
            self.refresh()

    # ------------------------------------------------------------------ work
    def _ensure_version0(self):
        load_or_compute_version0(self.active.bank, self.init_source, self.dataset_dicts, self.dataset_name,
                                 model=unwrap_model(self.trainer.model))
        self.active.set_version(0)

    def _publish(self, version, shard_arrays, info):
        """Write ``version`` from every rank's shard (every process calls it; no rank gathers the priors)."""
        overwrite = version in self.active.bank.versions()
        if overwrite and comm.is_main_process():
            logger.warning("Prior bank version %d exists from an earlier, unfinished run: replacing it", version)
        publish_version(self.active.bank, version, shard_arrays, info=info, overwrite=overwrite)

    def refresh(self):
        """Generate, smooth and publish the next prior version (every process takes part)."""
        start = time.perf_counter()
        model = unwrap_model(self.trainer.model) if self.teacher is None else self.teacher.model
        previous = self.active.current()
        local = shard(self.dataset_dicts)
        current = self.generator(model, local, previous)
        smoothed, kept = merge_refresh(previous, current, [d["image_id"] for d in local], self.smooth)
        del current
        shard_arrays = priors_to_arrays(smoothed)  # this rank's shard as arrays, no Python object per image
        del smoothed
        kept = sum(comm.all_gather(kept))
        version = previous.version + 1
        self._publish(version, shard_arrays, {"source": self.generator_name, "iteration": self.trainer.iter + 1,
                                              "teacher_momentum": 0.0 if self.teacher is None else self.teacher.momentum,
                                              "momentum": self.smooth.momentum,
                                              "iou_threshold": self.smooth.iou_threshold,
                                              "soft_nms_sigma": self.smooth.soft_nms_sigma,
                                              "rule": self.smooth.rule, "min_score": self.smooth.min_score,
                                              "images_kept_previous": kept})
        del shard_arrays
        self.active.set_version(version)
        logger.info("Prior bank version %d at iteration %d (%s): %.1f s, %d images where nothing was found kept "
                    "their priors", version, self.trainer.iter + 1, self.generator_name, time.perf_counter() - start,
                    kept)
        self._log_version(self.active.current(), previous=previous)
        # the refresh freed its buffers, but the allocator keeps them (~1 GB on the mini run): give them back
        gc.collect()
        release_free_heap()

    def _log_version(self, version, previous):
        if not comm.is_main_process():
            return
        storage = self.trainer.storage
        per_image = version.boxes_per_image()
        stats = {"version": version.version, "per_image": float(per_image.mean()) if len(per_image) else 0.0,
                 "mean_score": float(version.mean_score())}
        if previous is not None:
            ids = np.asarray(version.image_ids)[: self.stats_sample]
            stats["mean_iou_prev"] = float(np.mean([mean_best_iou(version.get(i)[0], previous.get(i)[0])
                                                    for i in ids])) if len(ids) else 0.0
        if self.eval_dicts:
            metrics = evaluate_priors(version, self.eval_dicts)
            self.quality.append((f"v{version.version}", metrics))
            stats.update({k: v for k, v in metrics.items() if k in ("AR@1", "AR@10", "AR@30", "AR@100", "R50@30",
                                                                     "AP", "AP50", "CorLoc")})
            logger.info("Prior quality per version (against %d annotated images):\n%s", len(self.eval_dicts),
                        format_prior_quality_table(self.quality))
            write_json_atomic(self.active.bank.root / "prior_quality.json", self.quality, indent=1)
        for k, v in stats.items():
            storage.put_scalar(f"priors/{k}", v, smoothing_hint=False)
        logger.info("Prior bank version %d: %s", version.version, json.dumps({k: round(v, 4) for k, v in stats.items()}))
