"""``train_net.py`` with one fault injected, for the kill / resume tests (test code, not shipped).

    python tests/helpers/fault_runner.py <train_net.py arguments>

with ``JOINDET_TEST_FAULT`` = ``<point>:<n>`` and ``JOINDET_TEST_MARKER`` = a file path. When the
training reaches the point, the runner creates the marker file and then

- ``step:<n>`` (inside iteration n, before its forward pass), ``refresh:<n>`` (inside the refresh that
  makes the version of iteration n: the new priors are generated, not yet smoothed or written),
  ``bank_write:<n>`` (inside the write of bank version n: its files are complete in the temporary folder,
  not yet renamed into place): waits until it is killed;
- ``sigterm:<n>`` (inside iteration n): waits until the file ``<marker>.sent`` exists (the test creates
  it after sending SIGTERM), then lets the iteration finish.
"""
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def _reached(marker):
    Path(marker).write_text(str(os.getpid()))


def _wait_forever():
    while True:
        time.sleep(0.1)


def install(point, n, marker):
    from detectron2.engine.train_loop import SimpleTrainer

    import joindet.engine.prior_hook as prior_hook
    from joindet.priors.bank import PriorBank

    if point in ("step", "sigterm"):
        run_step = SimpleTrainer.run_step

        def patched_run_step(self):
            if self.iter == n:
                _reached(marker)
                if point == "step":
                    _wait_forever()
                sent = Path(f"{marker}.sent")
                while not sent.exists():
                    time.sleep(0.05)
            return run_step(self)

        SimpleTrainer.run_step = patched_run_step
    elif point == "refresh":
        merge = prior_hook.merge_refresh
        hook_refresh = prior_hook.PriorRefreshHook.refresh

        def patched_refresh(self):
            if self.trainer.iter + 1 == n:
                def blocking_merge(*args, **kwargs):
                    _reached(marker)
                    _wait_forever()

                prior_hook.merge_refresh = blocking_merge
            try:
                return hook_refresh(self)
            finally:
                prior_hook.merge_refresh = merge

        prior_hook.PriorRefreshHook.refresh = patched_refresh
    elif point == "bank_write":
        move = PriorBank._move_into_place

        def patched_move(self, tmp, name, overwrite):
            if name == f"v{n:04d}":
                _reached(marker)
                _wait_forever()
            return move(self, tmp, name, overwrite)

        PriorBank._move_into_place = patched_move
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    fault = os.environ.get("JOINDET_TEST_FAULT")
    if fault:
        point, n = fault.split(":")
        install(point, int(n), os.environ["JOINDET_TEST_MARKER"])
    from joindet.engine.launcher import cli

    cli(sys.argv[1:])
