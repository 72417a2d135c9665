"""Process memory: the resident set size, and handing freed heap back to the system.

A prior refresh runs the model over the whole pretraining set with other tensor shapes than training
does; glibc's allocator keeps the freed blocks for reuse, so the process's resident size after a refresh
can stay ~1 GB above what it uses (measured by ``python -m joindet.benchmarks.soak``). ``malloc_trim(0)``
returns them; it is called once after every refresh.
"""
import ctypes
import functools

__all__ = ["rss_mib", "release_free_heap"]


def rss_mib():
    """This process's resident set size now (Linux ``/proc/self/status``), in MiB; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_free_heap():
    """glibc's ``malloc_trim(0)``: give freed heap memory back to the system. Returns False where it is
    not available (another C library), True when it ran."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim(0)
    return True
