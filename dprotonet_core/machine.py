"""The machine a figure was measured on, as one line (benchmarks, make-demo's stored timings)."""

from __future__ import annotations

import os
import platform

import torch


def machine_info(device: torch.device | str = "cpu") -> str:
    """One line: CPU model, logical CPUs, torch threads, torch and python versions, device."""
    device = torch.device(device)
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if cpu == "?":
        cpu = platform.processor() or platform.machine() or "?"
    info = (f"CPU {cpu}; {os.cpu_count()} logical CPUs; torch threads {torch.get_num_threads()}; "
            f"torch {torch.__version__}; python {platform.python_version()}; device {device}")
    if device.type == "cuda":
        info += f" ({torch.cuda.get_device_name(device)})"
    return info
