"""Fixtures of the Python binding's tests: short temp dirs, the fixture
daemon, process identities that survive PID reuse, and cleanup that kills
whatever a test left, even when it failed."""

import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

DAEMON = Path(__file__).resolve().parents[2] / "fixtures" / "daemon.py"


def start_time(pid):
    """Field 22 of /proc/PID/stat, or None for a dead or zombie process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


class Identity:
    """A process, told apart from a later one that reuses its PID."""

    def __init__(self, pid):
        self.pid = pid
        self.start = start_time(pid)

    def alive(self):
        return self.start is not None and start_time(self.pid) == self.start

    def kill(self):
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_for(what, check, timeout=20.0):
    """Polls `check` until it is truthy; fails naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def short_dir():
    with tempfile.TemporaryDirectory(prefix="tp-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def leftovers():
    """Processes to SIGKILL at the end if they still run."""
    found = []
    yield found
    for identity in found:
        identity.kill()


def daemon_kwargs(directory, name, **extra):
    kwargs = dict(
        plugin_name=name,
        command=sys.executable,
        args=[str(DAEMON)],
        socket_path=str(directory / f"{name}.sock"),
        startup_timeout=20.0,
        shutdown_grace_period=5.0,
    )
    kwargs.update(extra)
    return kwargs
