"""An interpreter that exits, raises or is SIGKILLed while a daemon runs
leaves no daemon behind: tend's guard and the parent-death signal stop it."""

import json
import signal
import subprocess
import sys

import pytest

from conftest import Identity, daemon_kwargs, wait_for

APP = """
import asyncio, json, sys
import tend

async def main():
    manager = tend.BackgroundProcessManager()
    await manager.start_process(**json.loads(sys.argv[1]))
    print(json.dumps({"pid": manager.pid("orphan")}), flush=True)
    # Keeps the manager until the test closes stdin, then ends as told.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    if sys.argv[2] == "raise":
        raise RuntimeError("boom")

asyncio.run(main())
"""


@pytest.mark.parametrize("ending", ["exit", "raise", "sigkill"])
def test_no_daemon_outlives_the_interpreter(short_dir, leftovers, ending):
    kwargs = daemon_kwargs(short_dir, "orphan")
    app = subprocess.Popen(
        [sys.executable, "-c", APP, json.dumps(kwargs), ending],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    leftovers.append(Identity(app.pid))
    try:
        line = app.stdout.readline()
        assert line, app.stderr.read()
        daemon = Identity(json.loads(line)["pid"])
        leftovers.append(daemon)
        assert daemon.alive()
        if ending == "sigkill":
            app.send_signal(signal.SIGKILL)
        else:
            app.stdin.close()
        code = app.wait(timeout=30)
        expected = {"exit": 0, "raise": 1, "sigkill": -signal.SIGKILL}[ending]
        assert code == expected, app.stderr.read()
        wait_for("the daemon to be gone", lambda: not daemon.alive())
    finally:
        app.kill()
        app.wait()
