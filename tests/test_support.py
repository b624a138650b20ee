"""tests/support's own rules: the zombie rule of the /proc probes, and what a bounded wait returns."""

from __future__ import annotations

import errno
import os
import socket
import subprocess

import pytest
from support import free_port, is_running, process_start_ticks, wait_for, wait_until


def test_a_zombie_keeps_its_identity_but_is_not_running() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        ticks = process_start_ticks(child.pid)
        assert ticks is not None and is_running(child.pid, ticks)
        child.kill()
        # Wait for the exit without reaping it (WNOWAIT): the child is now a zombie that holds its pid.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert process_start_ticks(child.pid) == ticks  # the pid still names that process
        assert not is_running(child.pid, ticks)  # but it runs nothing
    finally:
        child.kill()
        child.wait()
    assert process_start_ticks(child.pid) is None or process_start_ticks(child.pid) != ticks
    assert not is_running(child.pid, ticks)


def test_a_pid_with_another_start_time_is_another_process() -> None:
    mine = process_start_ticks(os.getpid())
    assert mine is not None and is_running(os.getpid(), mine)
    assert not is_running(os.getpid(), mine + 1)
    assert not is_running(os.getpid(), None)


def test_wait_for_tries_once_more_after_the_deadline() -> None:
    calls = []

    def second_call_is_true() -> bool:
        calls.append(1)
        return len(calls) >= 2

    # The first try is false and the deadline (0 s) has passed by the time it returns: a late but true
    # condition still counts (a slow poll on a loaded machine is no failure).
    assert wait_for(second_call_is_true, timeout=0)
    assert len(calls) == 2


def test_wait_for_is_false_and_wait_until_fails_with_what_when_it_never_holds() -> None:
    assert wait_for(lambda: False, timeout=0.1, interval=0.01) is False
    with pytest.raises(AssertionError, match=r"timed out after 0.1 s waiting for the moon"):
        wait_until(lambda: False, 0.1, "the moon", interval=0.01)
    wait_until(lambda: True, 0, "the sun")  # true at once: no failure


def test_nothing_listens_on_a_free_port() -> None:
    port = free_port()
    with socket.socket() as s, pytest.raises(OSError) as info:
        s.connect(("127.0.0.1", port))
    assert info.value.errno == errno.ECONNREFUSED
