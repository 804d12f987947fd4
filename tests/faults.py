"""Fault injection for real-Ray tests: ShardRank subclasses that die (SIGKILL) when they reach a lifecycle phase.

The rank kills itself at the start of the phase, so the fault lands by progress, never by a timer. A marker
file, created exclusively, makes it happen once: the group rebuilt after it starts normally.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from ray import cloudpickle

from actors.shard import ShardRank

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


def rank_dying_in(phase: str, rank: int, marker: Path, times: int = 1, base: type[ShardRank] = ShardRank,
                  armed_by: Path | None = None) -> type[ShardRank]:
    """A `base` whose rank `rank` is SIGKILLed as it enters `phase` (a ShardRank method), the first `times`
    times any such rank gets there (once the file `armed_by` exists, if given: after another fault). Each
    death writes `marker`.N holding the dead process's pid."""

    def die_first_times(self) -> None:
        if self.rank != rank or (armed_by is not None and not armed_by.exists()):
            return
        for n in range(times):
            try:
                fd = os.open(f"{marker}.{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            os.kill(os.getpid(), signal.SIGKILL)

    def method(self, *args):
        die_first_times(self)
        return getattr(base, phase)(self, *args)

    return type("DyingRank", (base,), {phase: method, "__module__": __name__})


def deaths(marker: Path) -> list[int]:
    """Pids of the ranks `rank_dying_in(..., marker)` killed so far."""
    return [int(path.read_text()) for path in sorted(marker.parent.glob(marker.name + ".*"))]
