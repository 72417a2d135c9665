"""
Where one training step's time goes, stage by stage::

    python -m joindet.benchmarks.train_step [--config-file configs/mini/pretrain_synth.yaml] [--iters 6] \\
        [--num-images 32] [--json train_step.json] [--output-dir output/train_step_bench] [KEY VALUE ...]
    python -m joindet.benchmarks.train_step --compare MODEL.TIMM.CHANNELS_LAST=False,True   # before / after

Why: to know which part of a pretraining step to speed up, this measures each stage of the real
step, in one process, without editing the model. It builds the trainer as the other benchmarks do
(``JoinDetTrainer`` for the ``JoinDet`` architecture, the supervised ``Trainer`` otherwise, e.g. with
``configs/mini/deformable_detr_synth.yaml``) on a synthetic set of ``--num-images`` images of its own
under the output folder, makes prior version 0 (the refresh hook's ``before_train``), then drives the
steps itself exactly as Detectron2's ``SimpleTrainer.run_step`` does: ``data = next(data_iter)``,
``loss_dict = model(data)``, ``losses = sum(loss_dict.values())``, ``optimizer.zero_grad()``,
``losses.backward()``, ``optimizer.step()`` (no other hooks, no LR schedule: neither changes a step's cost).

The stages are timed with ``time.perf_counter`` (after a CUDA synchronise when the model is on a GPU)
around the real modules: forward pre/post hooks on ``backbone``, ``transformer.encoder``,
``transformer.decoder``, the prediction heads (``class_embed``, ``bbox_embed``, ``embed_head``) and
``criterion.matcher``; ``model.losses`` and ``model.crop_embeddings`` wrapped by instance attributes.
Each stage is reported *exclusive* of the stages nested inside it, so the rows add up to the step:
``losses excl. matcher`` is the criterion without the Hungarian matching; ``embedding targets`` is the
whole of ``crop_embeddings`` (its frozen-encoder pass included: the backbone's hooks do not count calls
made from inside it); ``forward, other`` is the rest of ``model(data)`` (normalisation and padding, input
projections, position embeddings, the transformer's flattening and proposals, target preparation);
``other`` is the rest of the step (the loss sum, the timers). 2 warm-up steps, then medians over
``--iters`` steps; the share of a stage is its time summed over the measured steps over the steps' summed
time, so the shares add up to 100%. On a shared machine the absolute times move with the load;
``--compare KEY=V1,V2`` builds one trainer per value and alternates their steps, so that a before /
after ratio is measured side by side.
"""
import contextlib
import os
import statistics
import time
from typing import Optional, Sequence

from joindet.benchmarks import markdown_table, mini_pretraining_cfg, mini_pretraining_parser, write_rows

WARMUP_ITERS = 2
TOTAL = "step (total)"
# the stages in step order (each exclusive of the others), with what each covers
STAGES = {
    "data loading": "next(data_iter): loader, mapper, collation",
    "backbone": "model.backbone on the batch",
    "encoder": "transformer.encoder",
    "decoder + heads": "transformer.decoder, class/box/embedding heads",
    "embedding targets": "model.crop_embeddings (frozen encoder on prior crops)",
    "matcher": "criterion.matcher (all layers)",
    "losses excl. matcher": "model.losses minus the matcher",
    "forward, other": "rest of model(data)",
    "backward": "losses.backward()",
    "optimizer": "optimizer.zero_grad() + optimizer.step()",
    "other": "loss sum, timer overhead",
}
COLUMNS = ["stage", "median_ms", "share_pct", "covers"]


def build_parser():
    p = mini_pretraining_parser("train_step", __doc__.split("\n\n")[1], num_images=32,
                                output_dir="output/train_step_bench")
    p.add_argument("--iters", type=int, default=6, help="measured steps after 2 warm-up steps (default 6)")
    p.add_argument("--compare", default="", metavar="KEY=V1,V2[,...]",
                   help="one trainer per value of the config KEY, their steps alternated (side by side on a "
                        "shared machine), a table each and the ratios to the first")
    return p


class StageTimer:
    """Exclusive wall-clock seconds per stage of nested timed regions: a region's time, less that of the
    regions entered inside it, is added to its stage (a stage may be entered several times, nested in
    itself too: the decoder calls the box heads when refining). ``sync`` runs at every boundary (a CUDA
    synchronise: kernels are attributed to the stage that launched them)."""

    def __init__(self, sync=None):
        self.sync = sync or (lambda: None)
        self.seconds = {}
        self._stack = []  # [stage, start, seconds of the regions nested inside]

    def inside(self, stage):
        """True while a region of ``stage`` is open."""
        return any(s == stage for s, _, _ in self._stack)

    def enter(self, stage):
        self.sync()
        self._stack.append([stage, time.perf_counter(), 0.0])

    def exit(self):
        self.sync()
        stage, start, nested = self._stack.pop()
        elapsed = time.perf_counter() - start
        self.seconds[stage] = self.seconds.get(stage, 0.0) + max(0.0, elapsed - nested)
        if self._stack:
            self._stack[-1][2] += elapsed

    def call(self, stage, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` timed as ``stage``."""
        self.enter(stage)
        try:
            return fn(*args, **kwargs)
        finally:
            self.exit()

    def reset(self):
        """Start a new step (the stack is empty between steps)."""
        self.seconds = {}


def instrument(model, timer):
    """Time ``model``'s stages on ``timer``: forward hooks on the backbone, encoder, decoder, heads and
    matcher, and instance attributes wrapping ``losses`` and ``crop_embeddings`` (the model's files and
    class are untouched; deleting the attributes restores the methods). Calls of the backbone from
    inside ``crop_embeddings`` (the embedding encoder may be the backbone itself) count as embedding
    targets. Returns the hook handles."""
    handles = []

    def hook(module, stage, skip_inside=None):
        opened = []  # a stack of whether each pre-hook opened a region (the module may nest in itself)

        def pre(_module, _inputs):
            do = skip_inside is None or not timer.inside(skip_inside)
            opened.append(do)
            if do:
                timer.enter(stage)

        def post(_module, _inputs, _output):
            if opened.pop():
                timer.exit()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    hook(model.backbone, "backbone", skip_inside="embedding targets")
    hook(model.transformer.encoder, "encoder")
    hook(model.transformer.decoder, "decoder + heads")
    heads = [*model.class_embed, *model.bbox_embed] + ([model.embed_head] if hasattr(model, "embed_head") else [])
    for head in {id(h): h for h in heads}.values():  # shared heads (no box refinement) hooked once
        hook(head, "decoder + heads")
    hook(model.criterion.matcher, "matcher")
    losses = model.losses
    model.losses = lambda *a, **k: timer.call("losses excl. matcher", losses, *a, **k)
    if hasattr(model, "crop_embeddings"):
        crop_embeddings = model.crop_embeddings
        model.crop_embeddings = lambda *a, **k: timer.call("embedding targets", crop_embeddings, *a, **k)
    return handles


def timed_step(model, optimizer, data_iter, timer):
    """One training step as ``SimpleTrainer.run_step`` does it, timed stage by stage. Returns
    ``{stage: seconds}`` (exclusive, including ``other``) and the step's total seconds."""
    timer.reset()
    timer.sync()
    start = time.perf_counter()
    data = timer.call("data loading", next, data_iter)
    loss_dict = timer.call("forward, other", model, data)
    losses = sum(loss_dict.values())
    timer.enter("optimizer")
    optimizer.zero_grad()
    timer.exit()
    timer.call("backward", losses.backward)
    timer.call("optimizer", optimizer.step)
    timer.sync()
    total = time.perf_counter() - start
    seconds = dict(timer.seconds)
    seconds["other"] = max(0.0, total - sum(seconds.values()))
    return seconds, total


def summarize(steps, totals):
    """Rows (stage, median_ms, share_pct, covers) from the per-step ``{stage: seconds}`` and totals:
    stages that never ran (e.g. embedding targets of the supervised model) are left out; the last row is
    the step total (median, 100%)."""
    grand = sum(totals)
    rows = []
    for stage, covers in STAGES.items():
        if not any(stage in s for s in steps):
            continue
        values = [s.get(stage, 0.0) for s in steps]
        rows.append({"stage": stage, "median_ms": 1000.0 * statistics.median(values),
                     "share_pct": 100.0 * sum(values) / grand if grand > 0 else 0.0, "covers": covers,
                     "ms_per_step": [1000.0 * v for v in values]})
    rows.append({"stage": TOTAL, "median_ms": 1000.0 * statistics.median(totals), "share_pct": 100.0,
                 "covers": "the whole step", "ms_per_step": [1000.0 * t for t in totals]})
    return rows


def _build(args, extra_opts=()):
    """The trainer of ``args`` (plus ``extra_opts``) with prior version 0 made; and whether it pretrains."""
    from joindet.config import resolve_epochs
    from joindet.engine.pretrain import JoinDetTrainer
    from joindet.engine.trainer import Trainer

    cfg = mini_pretraining_cfg(args.config_file, args.output_dir, args.num_images, settings=[
        "SOLVER.CHECKPOINT_PERIOD", 100000], opts=[*args.opts, *extra_opts])
    resolve_epochs(cfg, args.num_images)
    pretraining = cfg.MODEL.META_ARCHITECTURE == "JoinDet"
    trainer = (JoinDetTrainer if pretraining else Trainer)(cfg)
    trainer.resume_or_load(resume=False)
    return cfg, trainer, pretraining


def main(argv: Optional[Sequence[str]] = None):
    args = build_parser().parse_args(argv)
    if args.iters < 1 or args.num_images < 1:
        raise SystemExit(f"--iters and --num-images must be >= 1, got {args.iters} and {args.num_images}")
    import torch

    from detectron2.utils.events import EventStorage

    from joindet.engine.common import unwrap_model

    variants = [()]
    if args.compare:
        key, sep, values = args.compare.partition("=")
        if not sep or len(values.split(",")) < 2:
            raise SystemExit(f"--compare wants KEY=V1,V2[,...], got {args.compare!r}")
        variants = [(key, v) for v in values.split(",")]
    built = [_build(args, opts) for opts in variants]
    measured = []
    # each trainer's own event storage, as in trainer.train() (the hook and the model may log scalars into
    # it), made the current one only around that trainer's work: storages stack, so entering them all at
    # once would send every variant's scalars into the last one
    with contextlib.ExitStack() as stack:
        for cfg, trainer, pretraining in built:
            trainer.storage = EventStorage(trainer.start_iter)
            if pretraining:
                with trainer.storage:
                    trainer.prior_hook.before_train()  # prior version 0: what the mapper's targets come from
            measured.append(stack.enter_context(_Measured(trainer)))
        for i in range(WARMUP_ITERS + args.iters):  # the variants' steps alternate: side by side
            for m in measured:
                m.step(keep=i >= WARMUP_ITERS)
    all_rows, summaries = [], []
    for opts, (cfg, trainer, _), m in zip(variants, built, measured):
        rows = summarize(m.steps, m.totals)
        summaries.append(rows)
        device = str(unwrap_model(trainer.model).device)
        variant = " ".join(opts) or "as configured"
        for r in rows:
            r.update(config=os.path.basename(args.config_file), variant=variant, ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
                     device=device, torch_threads=torch.get_num_threads(), iters=args.iters)
        print(f"One training step of {cfg.MODEL.META_ARCHITECTURE} ({os.path.basename(args.config_file)}, "
              f"{variant}), {cfg.SOLVER.IMS_PER_BATCH} images per batch on {device}: medians over {args.iters} "
              f"steps after {WARMUP_ITERS} warm-up steps; shares of the summed step time")
        print(markdown_table(rows, COLUMNS))
        all_rows.extend(rows)
    if len(measured) > 1:
        base = summaries[0]
        print(f"\nStep time relative to {' '.join(variants[0])} (steps alternated):")
        for opts, rows in zip(variants[1:], summaries[1:]):
            ratio = {r["stage"]: r["median_ms"] for r in rows}
            print(" ".join(opts) + ": " + ", ".join(
                f"{r['stage']} {ratio.get(r['stage'], 0.0) / r['median_ms']:.2f}x" for r in base if r["median_ms"] > 0))
    write_rows(args.json, all_rows)
    return all_rows


class _Measured:
    """Instrumented steps of one trainer's model and optimizer on one iterator of its train loader
    (a context: the hooks and wrappers are removed on exit). ``step(keep)`` runs one step and keeps its
    ``{stage: seconds}`` and total in ``steps`` / ``totals`` when ``keep``."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.steps, self.totals = [], []

    def __enter__(self):
        import torch

        from joindet.engine.common import unwrap_model

        self.model, self.optimizer = self.trainer.model, self.trainer.optimizer
        self.model.train()
        on_cuda = unwrap_model(self.model).device.type == "cuda"
        self.timer = StageTimer(torch.cuda.synchronize if on_cuda else None)
        self.handles = instrument(unwrap_model(self.model), self.timer)
        self.data_iter = iter(self.trainer.data_loader)
        return self

    def step(self, keep=True):
        with self.trainer.storage:
            seconds, total = timed_step(self.model, self.optimizer, self.data_iter, self.timer)
        if keep:
            self.steps.append(seconds)
            self.totals.append(total)

    def __exit__(self, *exc):
        from joindet.engine.common import unwrap_model

        for h in self.handles:
            h.remove()
        for name in ("losses", "crop_embeddings"):  # the wrappers: back to the class's methods
            unwrap_model(self.model).__dict__.pop(name, None)
        return False


if __name__ == "__main__":
    from detectron2.utils.logger import setup_logger

    setup_logger(name="joindet")  # here, not in main(): a caller (e.g. a test) keeps its own logging
    main()
