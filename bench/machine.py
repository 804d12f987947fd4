"""What machine a benchmark ran on, for its JSON record."""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path

import psutil


def describe_machine(**extra: str) -> dict:
    """Cores, CPU model, memory (GiB) and Python version, plus `extra` (library versions)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 2**20, 1),
            "python": platform.python_version(), **extra}


def machine_cpu() -> float | None:
    """CPU seconds every process on this machine has used (Linux /proc/stat), or None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(value) for value in fields]
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6]  # user nice system irq softirq
    return busy / os.sysconf("SC_CLK_TCK")


def _process_times() -> dict[int, tuple[float, str]]:
    """Every live process's CPU seconds so far (user + system, not its children's) and its command line."""
    found = {}
    for proc in psutil.process_iter(["cpu_times", "cmdline"]):
        times, cmdline = proc.info["cpu_times"], proc.info["cmdline"]
        if times is not None:  # None: not ours to read, or gone meanwhile
            found[proc.pid] = (times.user + times.system, " ".join(cmdline or ()))
    return found


class ProcessCPU:
    """CPU seconds used, while it is entered, by the processes whose command line holds each of `kinds`
    ({label: substring}), and by the whole machine (Linux /proc/stat; None elsewhere). Processes are sampled
    every `interval` s (psutil): a process's last sample before it exits is what counts for it, so one that lives
    under `interval` is missed."""

    def __init__(self, kinds: dict[str, str], interval: float = 0.2):
        self.kinds, self.interval = kinds, interval
        self._seen: dict[int, tuple[float, str]] = {}
        self._stop = threading.Event()

    def __enter__(self) -> ProcessCPU:
        self._base = _process_times()
        self._machine = machine_cpu()
        self._thread = threading.Thread(target=self._sample, name="process-cpu", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        end = machine_cpu()
        self.machine_s = None if end is None or self._machine is None else round(end - self._machine, 1)

    def _sample(self) -> None:
        while True:
            self._record()
            if self._stop.wait(self.interval):
                self._record()
                return

    def _record(self) -> None:
        # A process is of a kind if any sample showed that command line: Ray retitles a worker as it starts and ends.
        for pid, (cpu, cmdline) in _process_times().items():
            titles = self._seen.get(pid, (0.0, ""))[1]
            self._seen[pid] = (cpu, titles if cmdline in titles else f"{titles}\n{cmdline}")

    def total(self, label: str) -> float:
        """CPU seconds of the `label` processes while entered."""
        needle = self.kinds[label]
        used = sum(cpu - self._base.get(pid, (0.0, ""))[0] for pid, (cpu, cmdline) in self._seen.items()
                   if needle in cmdline)
        return round(used, 1)
