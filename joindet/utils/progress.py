"""Progress lines of a long pass over many items, through Detectron2's rate-limited logger."""
import datetime
import logging
import time

from detectron2.utils.logger import log_every_n_seconds

__all__ = ["log_progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``H:MM:SS`` of a duration in seconds (rounded to the second)."""
    return str(datetime.timedelta(seconds=int(round(seconds))))


def log_progress(what: str, done: int, total: int, start: float, unit: str = "images", every_s: float = 10.0):
    """Log ``what: done/total unit (pct), rate, elapsed, ETA`` on the ``joindet`` logger: at most once every
    ``every_s`` seconds (Detectron2's ``log_every_n_seconds``), and always when ``done == total``.

    ``start`` is the pass's ``time.perf_counter()`` at its beginning."""
    elapsed = time.perf_counter() - start
    rate = done / elapsed if elapsed > 0 else float("inf")
    eta = (total - done) / rate if rate > 0 else 0.0
    message = (f"{what}: {done}/{total} {unit} ({100.0 * done / max(total, 1):.0f}%), {rate:.1f} {unit}/s, "
               f"elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}")
    if done >= total:
        logging.getLogger("joindet").info(message)
    else:
        log_every_n_seconds(logging.INFO, message, n=every_s, name="joindet")
