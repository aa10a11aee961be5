"""How many CPU cores other programs leave free, and the number of torch threads that fits.

On a 2-core laptop with a browser open, or a shared server, torch's default of one thread per
core makes every operation wait for whichever of its threads the operating system has put aside
for another program: a 15x slowdown was measured. One thread per *free* core avoids it, and on an
idle machine it is torch's default. Other programs' share is measured from ``/proc/stat`` (Linux):
all CPU time spent on our cores minus our own. Elsewhere torch's default is kept.

How the threads wait matters as much as how many there are. Between two operations OpenMP's
threads spin for a moment (its default) or sleep at once (``OMP_WAIT_POLICY=PASSIVE``).
Spinning threads beside a program that wants their core take its time slices, and every
operation waits for a descheduled thread; but on a quiet 2-core machine sleeping threads made a
small model train a quarter to a third slower (every operation wakes them;
``benchmarks/wait_policy.py``). Where this module can measure the load, it gives a busy machine
fewer threads (one thread has nothing to spin for), so threads may spin; where it cannot, they
sleep (:func:`choose_wait_policy`).

This module imports nothing heavy: ``lal/__init__.py`` chooses the wait policy and starts a
measurement before torch is imported, so that importing torch (a second or so) is the first
measuring window.
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping



def _our_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return list(range(os.cpu_count() or 1))


def _busy_seconds(cores: list[int]) -> float | None:
    """CPU seconds spent (by anyone) on ``cores`` since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat", encoding="utf-8") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{core}" for core in cores}
    ticks = 0
    found = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
            ticks += user + nice + system + irq + softirq + steal
            found += 1
    if found != len(wanted):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuLoad:
    """Measures, between two calls, how many of our cores other programs kept busy."""

    def __init__(self) -> None:
        self.cores = _our_cores()
        self._mark = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float | None]:
        return time.monotonic(), time.process_time(), _busy_seconds(self.cores)

    def others_busy_cores(self, min_window_s: float = 0.0) -> float | None:
        """Cores' worth of CPU that other programs used since the last call (None if unknown)."""
        wall_0, own_0, busy_0 = self._mark
        if time.monotonic() - wall_0 < min_window_s:
            time.sleep(min_window_s - (time.monotonic() - wall_0))
        self._mark = wall_1, own_1, busy_1 = self._snapshot()
        if busy_0 is None or busy_1 is None or wall_1 <= wall_0:
            return None
        others = (busy_1 - busy_0) - (own_1 - own_0)
        return min(max(others / (wall_1 - wall_0), 0.0), float(len(self.cores)))

    def free_cores(self, min_window_s: float = 0.0) -> int | None:
        """Our cores minus the ones other programs keep busy, rounded, at least 1."""
        others = self.others_busy_cores(min_window_s)
        if others is None:
            return None
        return max(1, min(len(self.cores), round(len(self.cores) - others)))


def can_measure_load() -> bool:
    """True where other programs' CPU use on our cores can be read (Linux's ``/proc/stat``)."""
    return _busy_seconds(_our_cores()) is not None


def choose_wait_policy(environ: MutableMapping[str, str]) -> None:
    """Make OpenMP's threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``) where the load is unseen.

    It must run before torch is imported (OpenMP reads the variable once, when it loads). Where
    :func:`can_measure_load`, OpenMP's default (spin for a moment, then sleep) is kept: the thread
    count follows the load, so no thread spins beside a program that needs the core. A value the
    user set is kept either way.
    """
    if "OMP_WAIT_POLICY" not in environ and not can_measure_load():
        environ["OMP_WAIT_POLICY"] = "PASSIVE"


_load: CpuLoad | None = None
_threads_we_set: int | None = None


def start() -> None:
    """Begin a measuring window (``lal/__init__.py`` calls this before torch is imported)."""
    global _load
    if _load is None:
        _load = CpuLoad()


def fit_threads(min_window_s: float = 0.1) -> int:
    """Set torch's CPU threads to the cores other programs leave free; return the count in use.

    Called when lal's device module is imported and from time to time during training and
    sampling (:class:`ThreadFitter`). It measures since its last call, waiting until at least
    ``min_window_s`` has passed. It leaves the count alone when the user chose one
    (``OMP_NUM_THREADS``, or ``torch.set_num_threads`` since lal last set it) and where the load
    cannot be measured; ``LAL_NUM_THREADS=N`` fixes it at N.
    """
    import torch

    global _threads_we_set
    current = torch.get_num_threads()
    if os.environ.get("LAL_NUM_THREADS", "").isdigit():
        wanted = max(1, int(os.environ["LAL_NUM_THREADS"]))
        if current != wanted and _threads_we_set is None:
            torch.set_num_threads(wanted)
        _threads_we_set = torch.get_num_threads()
        return _threads_we_set
    if os.environ.get("OMP_NUM_THREADS") or (_threads_we_set is not None and current != _threads_we_set):
        return current
    start()
    assert _load is not None
    free = _load.free_cores(min_window_s)
    if free is not None and free != current:
        torch.set_num_threads(free)
    _threads_we_set = torch.get_num_threads()
    return _threads_we_set


class ThreadFitter:
    """Calls :func:`fit_threads` at most every ``every_s`` seconds: cheap enough for every step."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self._next = time.monotonic() + every_s

    def __call__(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every_s
            fit_threads(min_window_s=0.0)
