"""
Soak test: a mini pretraining with many prior refreshes, the process's resident memory after each one::

    python -m joindet.benchmarks.soak [--iters 60] [--period 5] [--num-images 100] [--json soak.json] \\
        [--output-dir output/soak] [KEY VALUE ...]

It runs ``configs/mini/pretrain_synth.yaml`` in this process (one training process, the CPU) with
``SOLVER.MAX_ITER --iters`` and a refresh every ``--period`` iterations, on a synthetic set of
``--num-images`` images kept in its own folder under the output folder (the shared synthetic cache is
not touched); trailing ``KEY VALUE`` pairs override the config. After every refresh (and a
``gc.collect()``) it records the resident set size (``VmRSS``), before and after glibc's ``malloc_trim``
(which returns freed heap to the system: what remains is memory in use; the refresh hook itself calls it
since this benchmark showed ~1 GB held that way), and prints a table: refresh,
iteration, bank version, both RSS figures in MiB, and their growth since the second refresh (the first
refreshes still allocate lasting buffers: the model's autograd and allocator caches, the data loader). A leak shows as growth that
keeps rising with every refresh; the target is a few percent at most after the second one.
"""
import gc
import time
from typing import Optional, Sequence

from joindet.benchmarks import markdown_table, mini_pretraining_cfg, mini_pretraining_parser, write_rows
from joindet.utils.memory import release_free_heap, rss_mib



def build_parser():
    p = mini_pretraining_parser("soak", __doc__.split("\n\n")[0], num_images=100, output_dir="output/soak")
    p.add_argument("--iters", type=int, default=60, help="training iterations (default 60)")
    p.add_argument("--period", type=int, default=5, help="iterations between refreshes (default 5)")
    return p


def main(argv: Optional[Sequence[str]] = None):
    args = build_parser().parse_args(argv)
    if args.period < 1 or args.iters <= args.period:
        raise SystemExit(f"--period must be >= 1 and below --iters, got {args.period} and {args.iters}")
    from joindet.config import resolve_epochs
    from joindet.engine.pretrain import JoinDetTrainer

    cfg = mini_pretraining_cfg(args.config_file, args.output_dir, args.num_images, settings=[
        "SOLVER.MAX_ITER", args.iters, "JOINDET.UPDATE_PERIOD_ITERS", args.period,
        "SOLVER.CHECKPOINT_PERIOD", 10 * args.iters], opts=args.opts)
    resolve_epochs(cfg, args.num_images)
    trainer = JoinDetTrainer(cfg)
    trainer.resume_or_load(resume=False)

    rows = []
    hook = trainer.prior_hook
    refresh = hook.refresh
    start = time.perf_counter()

    def measured_refresh():
        refresh()
        gc.collect()
        row = {"refresh": len(rows) + 1, "iteration": trainer.iter + 1, "version": hook.active.version,
               "rss_mib": round(rss_mib(), 1)}
        row["rss_trimmed_mib"] = round(rss_mib(), 1) if release_free_heap() else None
        row["elapsed_s"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(f"refresh {row['refresh']} at iteration {row['iteration']}: RSS {row['rss_mib']} MiB, "
              f"{row['rss_trimmed_mib']} MiB after malloc_trim", flush=True)

    hook.refresh = measured_refresh
    trainer.train()
    for key, growth in (("rss_mib", "growth_since_2nd_pct"), ("rss_trimmed_mib", "trimmed_growth_since_2nd_pct")):
        base = rows[1][key] if len(rows) >= 2 else None
        for r in rows:
            r[growth] = (round(100.0 * (r[key] - base) / base, 2)
                         if base is not None and r[key] is not None and r["refresh"] >= 2 else None)
    print(markdown_table(rows, ["refresh", "iteration", "version", "rss_mib", "growth_since_2nd_pct",
                                "rss_trimmed_mib", "trimmed_growth_since_2nd_pct", "elapsed_s"]))
    write_rows(args.json, rows)
    return rows


if __name__ == "__main__":
    from detectron2.utils.logger import setup_logger

    setup_logger(name="joindet")  # here, not in main(): a caller (e.g. a test) keeps its own logging
    main()
