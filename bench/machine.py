"""What machine a benchmark ran on, for its JSON record."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine(**extra: str) -> dict:
    """Cores, CPU model, memory (GiB) and Python version, plus `extra` (library versions)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
            "python": platform.python_version(), **extra}
