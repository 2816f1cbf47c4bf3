"""The supervisor's stop logic (services/stack.py) with real child processes that take their time."""

import signal
import sys
import time

import psutil

from services.stack import Service, StopRequest, stop_all

# a child that ignores SIGTERM (as a worker finishing a long task would), in a process group with a grandchild
STUBBORN = (
    "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('ready.', flush=True); "
    "time.sleep(600)"
)


def started(tmp_path, n: int = 2) -> list[Service]:
    procs = [Service(f"stubborn{i}", [sys.executable, "-c", STUBBORN], ready_log="ready.") for i in range(n)]
    for svc in procs:
        svc.start({}, tmp_path)
    deadline = time.monotonic() + 30
    while not all(svc.ready() for svc in procs):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return procs


def family(procs: list[Service]) -> list[psutil.Process]:
    out = []
    for svc in procs:
        parent = psutil.Process(svc.popen.pid)
        out += [parent, *parent.children(recursive=True)]
    assert len(out) == 2 * len(procs)
    return out


def test_a_second_signal_after_the_duplicate_window_kills_every_child_group(tmp_path):
    procs = started(tmp_path)
    everyone = family(procs)
    stop = StopRequest(procs, duplicate_s=0.2)
    stop.on_signal(signal.SIGTERM, None)
    assert stop.requested and not stop.kill
    time.sleep(0.3)
    stop.on_signal(signal.SIGTERM, None)  # as if the handler ran: it kills at once
    assert stop.kill
    t0 = time.monotonic()
    stop_all(procs, stop, timeout=30)  # nothing left to wait for
    assert time.monotonic() - t0 < 5
    assert all(svc.popen.returncode == -signal.SIGKILL for svc in procs)
    _, alive = psutil.wait_procs(everyone, timeout=10)
    assert not alive  # the grandchildren too


def test_the_same_signal_twice_in_a_row_is_one_graceful_stop_then_sigkill_after_the_timeout(tmp_path):
    procs = started(tmp_path)
    everyone = family(procs)
    stop = StopRequest(procs, duplicate_s=5)
    stop.on_signal(signal.SIGTERM, None)
    stop.on_signal(signal.SIGTERM, None)  # make forwarding the group's SIGTERM: not an escalation
    assert not stop.kill
    assert all(p.is_running() for p in everyone)
    t0 = time.monotonic()
    stop_all(procs, stop, timeout=1.0)
    assert time.monotonic() - t0 < 10
    _, alive = psutil.wait_procs(everyone, timeout=10)
    assert not alive  # the grandchildren too: the whole process group is killed
