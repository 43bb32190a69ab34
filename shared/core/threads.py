"""How many CPU threads a step uses (``num_threads``; step03: ``train.num_threads``), and a warning when other
processes leave fewer cores free than that, at the start or while the step runs.

Measured on a 2-core machine with a third process busy on one core (2 threads against 1): step03's epochs 2.8x
slower, step05 2.7x slower (88 s against 32 s), scikit-learn's HistGradientBoosting 2.4x. A thread sharing a core
with another process is descheduled for milliseconds at a time, and the other threads wait for it at every
parallel region. Idle, 2 threads were faster (step03 1.4x, step05 1.16x). The thread count is not chosen from the
load: training's floating-point results depend on it, and a rerun on the same machine should give the same model.
"""
from __future__ import annotations

import os
import sys
import time

#: seconds of /proc/stat sampled before warning that the cores are busy
IDLE_SAMPLE_S = 0.2


def _affinity() -> set[int] | None:
    """The CPUs this process may run on (a container's cpuset, taskset); None where the system cannot say."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    """How many cores this process may run on (:func:`_affinity`, else every core)."""
    mine = _affinity()
    return max(1, len(mine) if mine else os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int, int] | None:
    """(idle, total, cpus): jiffies since boot summed over /proc/stat's lines of the CPUs this process may run on
    (its affinity: a container's cpuset, taskset), and how many those are; None where there is no /proc/stat."""
    mine = _affinity()
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            lines = [ln.split() for ln in fh if ln.startswith("cpu") and ln[3:4].isdigit()]
    except OSError:
        return None
    idle = total = n = 0
    for f in lines:
        if mine is not None and int(f[0][3:]) not in mine:
            continue
        v = [int(x) for x in f[1:9]]
        idle += v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        total += sum(v)  # user nice system idle iowait irq softirq steal (guest is counted in user)
        n += 1
    return (idle, total, n) if n else None


def busy_warning(threads: int, free: float | None, key: str, training: bool = False, when: str = "now") -> str | None:
    """The warning for ``threads`` threads when other processes leave about ``free`` cores ``when``; None when
    they fit. ``training``: the step trains weights, which then depend on the count."""
    if free is None or threads <= 1 or free >= threads - 0.5:
        return None
    fit = max(1, int(free + 0.5))
    return (f"warning: {threads} CPU threads ({key}: 0 = every core), but other processes left only about {free:.1f} "
            f"of the {usable_cores()} cores free {when}. Threads that share a core with another process can make "
            f"this step several times slower (2 threads on 1 free core: 2.4-2.8x slower than 1 thread here). If it is "
            f"slow, set {key}: {fit}"
            + (f"; trained weights then differ a little from those of a {threads}-thread run" if training else ""))


class BusyWatch:
    """Warns once (stderr) when, between two :meth:`check` calls, other processes left fewer cores free than this
    process's ``threads``: /proc/stat's busy time minus this process's own CPU time (its threads; not its child
    processes, so a step with worker processes should not watch). Off when ``enabled`` is false, for one thread,
    or where /proc/stat is not there."""

    def __init__(self, threads: int, key: str, training: bool = False, enabled: bool = True):
        self.threads, self.key, self.training = threads, key, training
        self._mark = self._sample() if enabled and threads > 1 else None
        self.enabled = self._mark is not None and self._mark[0] is not None

    @staticmethod
    def _sample():
        t = os.times()
        return _cpu_times(), t.user + t.system

    def free_cores(self) -> float | None:
        """Cores that other processes left free since the last call (or since this watch began)."""
        (c0, own0), (c1, own1) = self._mark, self._sample()
        self._mark = (c1, own1)
        if c0 is None or c1 is None or c1[1] <= c0[1] or c1[2] != c0[2]:
            return None
        n = c1[2]
        total, idle = c1[1] - c0[1], c1[0] - c0[0]
        own = (own1 - own0) * os.sysconf("SC_CLK_TCK")  # seconds -> /proc/stat's ticks
        others = max(0.0, (total - idle - own) / (total / n))
        return max(0.0, n - others)

    def check(self, when: str) -> str | None:
        """The warning (printed once) when other processes left too few cores free since the last call."""
        if not self.enabled:
            return None
        msg = busy_warning(self.threads, self.free_cores(), self.key, self.training, when)
        if msg:
            self.enabled = False
            print(msg, file=sys.stderr, flush=True)
        return msg


def set_cpu_threads(requested: int, key: str, world: int = 1, default: int | None = None,
                    training: bool = False, on_cpu: bool = True, watch: bool = True) -> BusyWatch:
    """Set torch's intra-op threads for a step: ``requested`` when > 0, else ``default`` (when given) or this
    process's share of the usable cores (``world`` processes on one machine). When the count comes from 0 and a
    single process would use more threads than there are idle cores, warns once on stderr; an explicit count is
    the user's choice and is not second-guessed. Returns the :class:`BusyWatch` that goes on checking (``.threads``
    the count; it stays silent after a warning here, and with ``watch`` false, e.g. with worker processes). A
    step computing on a GPU (``on_cpu`` false) is not checked: its CPU threads do little."""
    import torch

    n = requested if requested > 0 else (default or max(1, usable_cores() // world))
    torch.set_num_threads(n)
    w = BusyWatch(n, key, training, enabled=requested <= 0 and world == 1 and on_cpu)
    if w.enabled:  # the start: the other processes' load while this one sleeps
        time.sleep(IDLE_SAMPLE_S)
        w.check("now")  # a warning here silences the watch
    w.enabled = w.enabled and watch
    return w
