"""CPU threads of a step (shared/core/threads.py): 0 = every usable core, and a warning when fewer are idle."""
from __future__ import annotations

import pytest
import torch

import shared.core.threads as th


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_free_cores_counts_the_cpus_this_process_may_use(monkeypatch, tmp_path):
    """/proc/stat's cpuN lines: user nice system idle iowait irq softirq steal ...; idle counts idle + iowait. Only
    the CPUs of the process's affinity count (a container's cpuset, taskset): here CPUs 0 and 2 of 4, CPU 1 busy
    and CPU 3 idle outside it."""
    snaps = iter([
        "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0 0 0\ncpu1 200 0 0 0 0 0 0 0 0 0\n"
        "cpu2 50 0 0 150 0 0 0 0 0 0\ncpu3 0 0 0 200 0 0 0 0 0 0\nintr 1 2 3\n",
        "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 200 0 0 100 0 0 0 0 0 0\ncpu1 300 0 0 0 0 0 0 0 0 0\n"
        "cpu2 50 0 0 230 20 0 0 0 0 0\ncpu3 0 0 0 300 0 0 0 0 0 0\nintr 1 2 3\n",
    ])
    real_open = open

    def fake_open(path, *a, **k):
        f = tmp_path / "stat"
        f.write_text(next(snaps))
        return real_open(f, *a, **k)

    monkeypatch.setattr(th, "open", fake_open, raising=False)
    monkeypatch.setattr(th, "_affinity", lambda: {0, 2})
    monkeypatch.setattr(th.os, "times", lambda: type("T", (), {"user": 5.0, "system": 1.0})())  # this one slept
    w = th.BusyWatch(2, "num_threads")
    # 200 jiffies passed on CPUs 0 and 2, 100 of them idle (CPU 2: 80 idle + 20 iowait): one of the 2 cores
    assert w.free_cores() == pytest.approx(1.0)


def test_free_cores_on_this_machine_is_within_its_cores():
    import time

    w = th.BusyWatch(2, "num_threads")
    time.sleep(0.05)
    got = w.free_cores() if w.enabled else None
    assert got is None or 0.0 <= got <= th.usable_cores() + 1e-9


def test_busy_warning_names_the_count_that_fits_or_stays_silent():
    assert th.busy_warning(2, 1.9, "num_threads") is None  # within half a core
    assert th.busy_warning(2, None, "num_threads") is None  # not measurable
    assert th.busy_warning(1, 0.1, "num_threads") is None  # one thread cannot oversubscribe
    msg = th.busy_warning(2, 0.9, "train.num_threads", when="during epoch 3")
    assert msg.startswith("warning: 2 CPU threads") and "only about 0.9 of the" in msg and "free during epoch 3" in msg
    assert "set train.num_threads: 1" in msg and "weights" not in msg
    assert "trained weights then differ" in th.busy_warning(2, 0.9, "train.num_threads", training=True)
    assert "set num_threads: 3" in th.busy_warning(8, 3.2, "num_threads")


def test_set_cpu_threads_sets_torch_and_warns_only_for_an_automatic_count(monkeypatch, capsys):
    monkeypatch.setattr(th, "usable_cores", lambda: 4)
    monkeypatch.setattr(th, "_cpu_times", lambda: (0, 0, 4))  # /proc/stat there; the load comes from free_cores
    monkeypatch.setattr(th.time, "sleep", lambda s: None)
    monkeypatch.setattr(th.BusyWatch, "free_cores", lambda self: 1.0)
    w = th.set_cpu_threads(3, "num_threads")
    assert w.threads == 3 and torch.get_num_threads() == 3 and not w.enabled
    assert capsys.readouterr().err == ""  # an explicit count is the user's choice
    w = th.set_cpu_threads(0, "num_threads")
    assert w.threads == 4 and torch.get_num_threads() == 4
    err = capsys.readouterr().err
    assert "4 CPU threads" in err and "set num_threads: 1" in err
    assert not w.enabled  # warned once at the start: not again while running
    assert th.set_cpu_threads(0, "num_threads", world=2).threads == 2  # torchrun: the ranks start together
    assert capsys.readouterr().err == ""
    assert th.set_cpu_threads(0, "train.num_threads", default=2).threads == 2
    assert "set train.num_threads: 1" in capsys.readouterr().err
    monkeypatch.setattr(th.BusyWatch, "free_cores", lambda self: 3.8)
    w = th.set_cpu_threads(0, "num_threads")
    assert w.threads == 4 and capsys.readouterr().err == "" and w.enabled
    assert not th.set_cpu_threads(0, "num_threads", watch=False).enabled  # e.g. worker processes
    monkeypatch.setattr(th.BusyWatch, "free_cores", lambda self: 0.5)
    w = th.set_cpu_threads(0, "num_threads", on_cpu=False)  # on a GPU: neither check
    assert w.threads == 4 and not w.enabled and capsys.readouterr().err == ""


def test_busy_watch_counts_other_processes_not_this_one(monkeypatch, capsys):
    """Between two checks 2 cores ran 200 ticks each (400); 150 were idle, this process used 1.5 s (150 ticks at
    100 per second): other processes kept 100 ticks busy, half a core, so 1.5 cores were free for 2 threads (no
    warning). Next, 300 of 400 busy with this process at 1 s: others 1 core, 1 free: the warning, once."""
    stats = iter([(0, 0, 2), (150, 400, 2), (250, 800, 2), (350, 1200, 2)])
    own = iter([0.0, 1.5, 2.5, 3.5])
    monkeypatch.setattr(th, "_cpu_times", lambda: next(stats))
    monkeypatch.setattr(th.os, "times", lambda: type("T", (), {"user": next(own), "system": 0.0})())
    monkeypatch.setattr(th.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(th.os, "sysconf", lambda name: 100)
    w = th.BusyWatch.__new__(th.BusyWatch)
    w.threads, w.key, w.training, w.enabled = 2, "train.num_threads", True, True
    w._mark = w._sample()
    assert w.check("during epoch 1") is None
    msg = w.check("during epoch 2")
    assert "about 1.0 of the 2 cores free during epoch 2" in msg and "set train.num_threads: 1" in msg
    assert capsys.readouterr().err.strip() == msg
    assert w.check("during epoch 3") is None and not w.enabled  # once


def test_busy_watch_is_off_for_one_thread_or_when_disabled():
    assert not th.BusyWatch(1, "num_threads").enabled
    assert not th.BusyWatch(2, "num_threads", enabled=False).enabled
    assert th.BusyWatch(2, "num_threads", enabled=False).check("now") is None
