"""
A whole prior refresh against one training epoch on the same images and model::

    python -m joindet.benchmarks.refresh [--num-images 100] [--generators rescore ncut_encoder] \\
        [--json refresh.json] [--output-dir output/refresh_bench] [KEY VALUE ...]

Why: at full scale a refresh runs every 10 epochs and has no backward pass, so it should cost at most
10% of one epoch; this measures that ratio side by side in one process. It runs
``configs/mini/pretrain_synth.yaml`` in this process on a synthetic set of ``--num-images`` images kept in
its own folder under the output folder (the shared synthetic cache is not touched); trailing
``KEY VALUE`` pairs override the config. The prior-quality evaluation of each version is off
(``JOINDET.PRIORS.EVAL_DATASET ""``: a full-scale set has no boxes to evaluate against; pass it back
as an override to include it).

1. One training epoch: ``ceil(images / SOLVER.IMS_PER_BATCH)`` iterations after a warm-up of 2, each
   timed around the trainer's own ``run_step`` (data loading, forward, backward, optimizer step) in
   the trainer's normal loop; the epoch is the sum of those times.
2. Then, after the last iteration (the same trainer, model and prior bank), for each generator in turn:
   the generator built by ``build_refresh_generator`` with ``JOINDET.REFRESH.GENERATOR`` set to it,
   warmed up on one batch of images (nothing written), then one full ``PriorRefreshHook.refresh()``
   timed: generation, Box Smooth, gather, the write of the next bank version (into this benchmark's
   output folder) and its activation. Its stages: ``generate_s`` (the generator's call) and
   ``smooth_gather_write_s`` (the rest: Box Smooth, gather, the write, activation, statistics); only
   the generator is wrapped, so the split does not depend on the hook's private methods. Each generator refreshes the version the previous one wrote, as
   successive refreshes of a run do. A generator that reads the training steps (``rescore_online``) records
   during the epoch and refreshes first (it scores the views of the version the epoch trained on).

Printed: a Markdown table per generator (epoch and refresh seconds, refresh as a percentage of the
epoch, refresh seconds per image, the stages); the JSON rows (``--json``) hold the unrounded figures.
On a shared machine the absolute times move with the load; the ratio, measured minutes apart in one
process, moves less.
"""
import math
import statistics
import time
from typing import Optional, Sequence

from joindet.benchmarks import markdown_table, mini_pretraining_cfg, mini_pretraining_parser, write_rows

WARMUP_ITERS = 2
DEFAULT_GENERATORS = ("rescore_online", "rescore", "ncut_encoder")
TARGET_PCT = 10.0  # a refresh every 10 epochs at full scale: <= 10% of an epoch keeps it <= 1% of training
COLUMNS = ["generator", "epoch_s", "refresh_s", "refresh_pct_of_epoch", "s_per_image", "generate_s",
           "smooth_gather_write_s", "within_target"]


def build_parser():
    p = mini_pretraining_parser("refresh", __doc__.split("\n\n")[1], num_images=100, output_dir="output/refresh_bench")
    p.add_argument("--generators", nargs="+", default=list(DEFAULT_GENERATORS),
                   help=f"refresh generators to time (default: {' '.join(DEFAULT_GENERATORS)})")
    return p


class _TimedCall:
    """Wraps a refresh generator, adding the seconds of each call to ``seconds``; ``name`` is passed
    through (the hook records the generator's name in the version it writes)."""

    def __init__(self, fn):
        from joindet.priors.refresh import refresh_generator_name

        self.fn, self.seconds = fn, 0.0
        self.name = refresh_generator_name(fn)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def _refresh_generators(cfg, names):
    """``{name: generator}``, each built as the trainer builds its own: ``build_refresh_generator`` on
    ``cfg`` with ``JOINDET.REFRESH.GENERATOR`` set to ``name``, images read by the
    test-time mapper."""
    from joindet.data.mapper import DetrDatasetMapper
    from joindet.priors.refresh import REFRESH_GENERATOR_REGISTRY, build_refresh_generator

    mapper = DetrDatasetMapper(cfg, is_train=False)
    generators = {}
    # a generator that reads the training steps (rescore_online) scores the views of the version the epoch
    # trained on: it refreshes first, before the others publish new versions
    names = sorted(names, key=lambda n: not hasattr(REFRESH_GENERATOR_REGISTRY.get(n), "attach"))
    for name in names:
        c = cfg.clone()
        c.defrost()
        c.JOINDET.REFRESH.GENERATOR = name
        generators[name] = build_refresh_generator(c, mapper)
    return generators


def time_refreshes(trainer, generators, num_images):
    """One full ``hook.refresh()`` per generator on ``trainer``'s model and bank (the hook's generator
    swapped in, then restored), each after a one-batch warm-up of the generator. Returns a row per
    generator: ``refresh_s``, ``generate_s``, ``smooth_gather_write_s``, ``version``."""
    from joindet.engine.common import unwrap_model

    hook = trainer.prior_hook
    own_generator = hook.generator
    rows = []
    try:
        for name, generator in generators.items():
            if not hasattr(generator, "attach"):  # (an online generator has no forward pass to warm up)
                warmup = hook.dataset_dicts[: max(1, getattr(generator, "batch_size", 1))]
                generator(unwrap_model(trainer.model), warmup, hook.active.current())
            hook.generator = _TimedCall(generator)
            start = time.perf_counter()
            hook.refresh()
            refresh_s = time.perf_counter() - start
            rows.append({"generator": name, "images": num_images, "refresh_s": refresh_s,
                         "generate_s": hook.generator.seconds,
                         "smooth_gather_write_s": refresh_s - hook.generator.seconds,
                         "version": hook.active.version})
            print(f"{name}: refresh {refresh_s:.2f} s (generation {hook.generator.seconds:.2f} s), "
                  f"bank version {hook.active.version}", flush=True)
    finally:
        hook.generator = own_generator
    return rows


def main(argv: Optional[Sequence[str]] = None):
    args = build_parser().parse_args(argv)
    if args.num_images < 1:
        raise SystemExit(f"--num-images must be >= 1, got {args.num_images}")
    from detectron2.data import get_detection_dataset_dicts
    from detectron2.engine import HookBase

    from joindet.config import resolve_epochs, validate_config
    from joindet.engine.pretrain import JoinDetTrainer
    from joindet.engine.common import unwrap_model
    from joindet.priors.refresh import REFRESH_GENERATOR_REGISTRY

    unknown = [g for g in args.generators if g not in REFRESH_GENERATOR_REGISTRY]
    if unknown:
        registered = sorted(n for n, _ in REFRESH_GENERATOR_REGISTRY)
        raise SystemExit(f"--generators: unknown {unknown}; registered: {registered}")

    cfg = mini_pretraining_cfg(args.config_file, args.output_dir, args.num_images, opts=args.opts)
    # the epoch of the set actually trained on (DATASETS.TRAIN may be overridden), before the trainer
    # exists: its schedule is warm-up + one epoch, with no refresh or checkpoint of its own on the way
    num_images = len(get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False))
    epoch_iters = math.ceil(num_images / cfg.SOLVER.IMS_PER_BATCH)
    max_iter = WARMUP_ITERS + epoch_iters
    cfg.SOLVER.EPOCHS = 0.0
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.JOINDET.UPDATE_PERIOD_ITERS = max_iter  # the hook refreshes only before max_iter: never
    cfg.SOLVER.CHECKPOINT_PERIOD = 10 * max_iter
    validate_config(cfg)
    resolve_epochs(cfg, num_images)
    trainer = JoinDetTrainer(cfg)
    trainer.resume_or_load(resume=False)
    generators = _refresh_generators(trainer.cfg, args.generators)  # unknown settings fail before training
    for generator in generators.values():
        if hasattr(generator, "attach"):  # it reads the epoch's training steps
            generator.attach(unwrap_model(trainer.model))

    step_s = []
    run_step = trainer.run_step

    def timed_run_step():
        start = time.perf_counter()
        run_step()
        step_s.append(time.perf_counter() - start)

    refresh_rows = []

    class _RefreshesAfterEpoch(HookBase):
        """Runs the timed refreshes after the last iteration's other hooks, inside the training loop (its
        event storage, the model as the epoch left it)."""

        def after_step(self):
            if self.trainer.iter + 1 == self.trainer.max_iter:
                refresh_rows.extend(time_refreshes(trainer, generators, num_images))

    trainer.run_step = timed_run_step
    trainer.register_hooks([_RefreshesAfterEpoch()])
    trainer.train()
    if len(step_s) != max_iter or len(refresh_rows) != len(generators):
        raise RuntimeError(f"expected {max_iter} iterations and {len(generators)} refreshes, "
                           f"ran {len(step_s)} and {len(refresh_rows)}")

    epoch_s = sum(step_s[WARMUP_ITERS:])
    rows = []
    for r in refresh_rows:
        pct = 100.0 * r["refresh_s"] / epoch_s
        rows.append({"generator": r["generator"], "images": num_images, "epoch_iters": epoch_iters,
                     "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "epoch_s": epoch_s,
                     "iter_s_median": statistics.median(step_s[WARMUP_ITERS:]),
                     "refresh_s": r["refresh_s"], "refresh_pct_of_epoch": pct,
                     "s_per_image": r["refresh_s"] / num_images, "generate_s": r["generate_s"],
                     "smooth_gather_write_s": r["smooth_gather_write_s"],
                     "version": r["version"], "within_target": "yes" if pct <= TARGET_PCT else "no"})
    print(f"One epoch: {epoch_iters} iterations of {cfg.SOLVER.IMS_PER_BATCH} images ({num_images} images) "
          f"after {WARMUP_ITERS} warm-up iterations; target: refresh <= {TARGET_PCT:g}% of an epoch")
    print(markdown_table(rows, COLUMNS))
    write_rows(args.json, rows)
    return rows


if __name__ == "__main__":
    from detectron2.utils.logger import setup_logger

    setup_logger(name="joindet")  # here, not in main(): a caller (e.g. a test) keeps its own logging
    main()
