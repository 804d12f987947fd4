"""What machine a benchmark ran on, for its JSON record."""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path


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
    """Every live process's CPU seconds so far and its command line (Linux /proc)."""
    tick, found = os.sysconf("SC_CLK_TCK"), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry.name)] = ((int(fields[11]) + int(fields[12])) / tick, cmdline)
    return found


class ProcessCPU:
    """CPU seconds used, while it is entered, by the processes whose command line holds each of `kinds`
    ({label: substring}), and by the whole machine. Sampled from /proc every `interval` s: a process's last
    sample before it exits is what counts for it, so one that lives under `interval` is missed. Linux only
    (elsewhere every total is None)."""

    def __init__(self, kinds: dict[str, str], interval: float = 0.2):
        self.kinds, self.interval = kinds, interval
        self._seen: dict[int, tuple[float, str]] = {}
        self._stop = threading.Event()

    def __enter__(self) -> ProcessCPU:
        self._base = _process_times() if Path("/proc/stat").exists() else None
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
        while self._base is not None:
            self._record()
            if self._stop.wait(self.interval):
                self._record()
                return

    def _record(self) -> None:
        # A process is of a kind if any sample showed that command line: Ray retitles a worker as it starts and ends.
        for pid, (cpu, cmdline) in _process_times().items():
            titles = self._seen.get(pid, (0.0, ""))[1]
            self._seen[pid] = (cpu, titles if cmdline in titles else f"{titles}\n{cmdline}")

    def total(self, label: str) -> float | None:
        """CPU seconds of the `label` processes while entered."""
        if self._base is None:
            return None
        needle = self.kinds[label]
        used = sum(cpu - self._base.get(pid, (0.0, ""))[0] for pid, (cpu, cmdline) in self._seen.items()
                   if needle in cmdline)
        return round(used, 1)
