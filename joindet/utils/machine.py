"""What machine a run was made on.

Float results depend on the CPU's SIMD kernels: the same run, seed and code gives slightly different numbers on
two CPUs (docs/experiments/downstream.md, "Where the noise comes from"). Every comparison run records this, so
that pairs can be checked for having been made on one machine.

``python -m joindet.utils.machine`` prints it as JSON.
"""
import json
import os
import platform
from typing import Dict

import torch

__all__ = ["cpu_fields", "machine_info"]


def cpu_fields(cpuinfo: str = "/proc/cpuinfo") -> Dict[str, str]:
    """The fields of the first processor listed in ``cpuinfo`` (Linux), e.g. ``{"model name": ..., "cpu family":
    "6", "model": "167", ...}``; empty where the file cannot be read."""
    fields: Dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break  # the end of the first processor's block
                    continue
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:  # no /proc/cpuinfo (not Linux), or unreadable
        return {}
    return fields


def machine_info(cpuinfo: str = "/proc/cpuinfo") -> Dict[str, object]:
    """
    The CPU model name; its identity (vendor, family, model, stepping: a virtual machine's model name is often
    generic, the numbers still tell CPU generations apart); torch's CPU capability (the kernels it dispatches
    to: DEFAULT, AVX2, AVX512, ...); the logical CPU count; the torch and Python versions.
    """
    fields = cpu_fields(cpuinfo)
    ident = [fields.get("vendor_id")] + [f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields]
    return {
        "cpu": fields.get("model name") or platform.processor() or None,
        "cpu_id": " ".join(x for x in ident if x) or None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    print(json.dumps(machine_info(), indent=2))
