"""The Python manager against real daemons (../../fixtures/daemon.py)."""

import asyncio
import os
import threading
import time

import pytest

import tend
from conftest import Identity, daemon_kwargs, wait_for


def run(coroutine_function):
    """Runs `coroutine_function(manager)` in a fresh event loop; every daemon
    of the manager is stopped at the end (killed if the stop failed)."""

    async def main():
        manager = tend.BackgroundProcessManager()
        try:
            return await coroutine_function(manager)
        finally:
            pids = [info.pid for info in manager.list() if info.pid]
            await manager.stop_all_processes()
            for pid in pids:
                Identity(pid).kill()

    return asyncio.run(main())


def test_names_never_started_are_none():
    manager = tend.BackgroundProcessManager()
    assert manager.is_running("nobody") is False
    assert manager.state("nobody") is None
    assert manager.pid("nobody") is None
    assert manager.process_info("nobody") is None


def test_constants_match_the_seed():
    assert tend.ProcessState.RUNNING == "running"
    assert [tend.ProcessState.STARTING, tend.ProcessState.STOPPING, tend.ProcessState.STOPPED,
            tend.ProcessState.ERROR] == ["starting", "stopping", "stopped", "error"]
    assert tend.PLUGIN_TIMEOUTS["BACKGROUND_PROCESS_STARTUP"] == 30.0
    assert tend.PLUGIN_TIMEOUTS["BACKGROUND_PROCESS_MAX_RESTART_ATTEMPTS"] == 3
    assert len(tend.PLUGIN_TIMEOUTS) == 7


def test_start_info_stop(short_dir, leftovers):
    async def scenario(manager):
        kwargs = daemon_kwargs(
            short_dir,
            "info",
            healthcheck={"interval": 1.0, "timeout": 0.5, "retries": 2},
            max_restart_attempts=1,
            restart_delay=0.1,
        )
        await manager.start_process(**kwargs)
        assert manager.is_running("info")
        assert manager.state("info") == "running"
        pid = manager.pid("info")
        daemon = Identity(pid)
        leftovers.append(daemon)
        info = manager.process_info("info")
        assert (info.state, info.pid, info.failed_health_checks, info.restart_attempts, info.last_error) == (
            "running", pid, 0, 0, None)
        assert info.started_at > 0
        await manager.stop_process("info")
        assert manager.state("info") == "stopped"
        assert manager.pid("info") is None
        assert not daemon.alive()
        assert not (short_dir / "info.sock").exists(), "the daemon removed its socket on SIGTERM"

    run(scenario)


def test_failed_start_raises_and_keeps_last_error(short_dir):
    async def scenario(manager):
        with pytest.raises(tend.TendError, match=r"(?s)exited with code 3.*cannot read config\.json"):
            await manager.start_process(**daemon_kwargs(short_dir, "fails", env={"DAEMON_FAIL": "1"}))
        info = manager.process_info("fails")
        assert info.state == "error"
        assert "cannot read config.json" in info.last_error

    run(scenario)


def test_bad_input_names_the_daemon_and_the_key(short_dir):
    async def scenario(manager):
        with pytest.raises(ValueError, match=r'start_process\("neg"\): restart_delay must be a number of seconds'):
            await manager.start_process(**daemon_kwargs(short_dir, "neg", restart_delay=-1.0))
        with pytest.raises(ValueError, match=r'unknown healthcheck key "every"'):
            await manager.start_process(**daemon_kwargs(short_dir, "hc", healthcheck={"every": 1.0}))
        with pytest.raises(tend.TendError, match="socket"):
            await manager.start_process(**daemon_kwargs(short_dir, "rel", socket_path="relative.sock"))
        with pytest.raises(TypeError):
            await manager.start_process(**daemon_kwargs(short_dir, "typo", startup_timout=1.0))

    run(scenario)


def test_start_after_stop_all_is_refused(short_dir, leftovers):
    async def scenario(manager):
        await manager.start_process(**daemon_kwargs(short_dir, "first"))
        daemon = Identity(manager.pid("first"))
        leftovers.append(daemon)
        await manager.stop_all_processes()
        assert not daemon.alive()
        with pytest.raises(tend.TendError, match="Cannot start process during shutdown"):
            await manager.start_process(**daemon_kwargs(short_dir, "late"))

    run(scenario)


def test_env_and_json_rpc(short_dir):
    async def scenario(manager):
        await manager.start_process(**daemon_kwargs(short_dir, "rpc", env={"PORT": "8080"}))
        assert await manager.call("rpc", "env", {"name": "PORT"}) == "8080"
        assert await manager.call("rpc", "ping") == "pong"
        assert await manager.call("rpc", "pid", timeout=5.0) == manager.pid("rpc")

    run(scenario)


def test_events_iterator_sees_the_lifecycle(short_dir):
    async def scenario(manager):
        events = manager.events()
        await manager.start_process(**daemon_kwargs(short_dir, "ev"))
        await manager.stop_process("ev")
        seen = []
        async for event in events:
            assert event.name == "ev"
            seen.append((event.from_state, event.to_state))
            if event.to_state == "stopped":
                break
        assert seen == [("stopped", "starting"), ("starting", "running"), ("running", "stopping"),
                        ("stopping", "stopped")]

    run(scenario)


def test_logs(short_dir):
    async def scenario(manager):
        await manager.start_process(**daemon_kwargs(short_dir, "logs"))
        wait_for("the listening line", lambda: any("listening" in line.text for line in manager.logs("logs", 10)))
        assert {line.stream for line in manager.logs("logs")} <= {"stderr", "tend"}
        with pytest.raises(tend.TendError, match="nobody"):
            manager.logs("nobody")

    run(scenario)


def test_start_does_not_block_the_event_loop(short_dir):
    async def scenario(manager):
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        began = time.monotonic()
        # The daemon listens only after 0.5 s: the loop must keep ticking.
        await manager.start_process(**daemon_kwargs(short_dir, "slow", env={"DAEMON_DELAY": "0.5"}))
        elapsed = time.monotonic() - began
        task.cancel()
        assert elapsed >= 0.5
        assert ticks >= 10, f"only {ticks} ticks of 10 ms in {elapsed:.2f} s"

    run(scenario)


def test_from_plain_threads(short_dir, leftovers):
    """One manager shared by threads: each runs its own event loop to start
    a daemon, while other threads query without any loop."""
    manager = tend.BackgroundProcessManager()
    errors = []

    def starter(index):
        try:
            asyncio.run(manager.start_process(**daemon_kwargs(short_dir, f"t{index}")))
        except Exception as error:  # reported below
            errors.append(error)

    def querier(stop):
        while not stop.is_set():
            for index in range(3):
                manager.is_running(f"t{index}")
                manager.process_info(f"t{index}")

    stop = threading.Event()
    queriers = [threading.Thread(target=querier, args=(stop,)) for _ in range(2)]
    starters = [threading.Thread(target=starter, args=(i,)) for i in range(3)]
    for thread in queriers + starters:
        thread.start()
    for thread in starters:
        thread.join(timeout=60)
    stop.set()
    for thread in queriers:
        thread.join(timeout=60)
    try:
        assert errors == []
        assert all(manager.is_running(f"t{i}") for i in range(3))
        leftovers.extend(Identity(manager.pid(f"t{i}")) for i in range(3))
    finally:
        asyncio.run(manager.stop_all_processes())
    assert not any(identity.alive() for identity in leftovers)


def test_a_manager_nobody_references_keeps_its_daemons(short_dir, leftovers):
    import gc

    async def start():
        manager = tend.BackgroundProcessManager()
        await manager.start_process(**daemon_kwargs(short_dir, "kept"))
        return manager.pid("kept")

    async def scenario():
        pid = await start()
        gc.collect()
        daemon = Identity(pid)
        leftovers.append(daemon)
        assert daemon.alive(), "the daemon outlived its manager's last reference"
        # Stopped through the registry of live managers.
        for manager in list(tend._live_managers):
            if manager.pid("kept") == pid:
                await manager.stop_all_processes()
        assert not daemon.alive()

    asyncio.run(scenario())


def test_restart_gives_a_new_incarnation(short_dir, leftovers):
    async def scenario(manager):
        await manager.start_process(**daemon_kwargs(short_dir, "again"))
        first = Identity(manager.pid("again"))
        leftovers.append(first)
        await manager.restart_process("again")
        assert manager.state("again") == "running"
        assert not first.alive()
        assert manager.pid("again") != first.pid

    run(scenario)


def test_a_socket_path_that_is_not_utf8(short_dir):
    """Paths are bytes to the kernel: a name that is not UTF-8 reaches the
    daemon as given (surrogate escapes, as os.fsdecode makes them)."""
    directory = os.fsencode(short_dir) + b"/\xff\xfe"
    os.mkdir(directory)
    socket_path = directory + b"/d.sock"

    async def scenario(manager):
        kwargs = daemon_kwargs(short_dir, "bytes", socket_path=os.fsdecode(socket_path))
        await manager.start_process(**kwargs)
        assert manager.is_running("bytes")
        assert os.path.exists(socket_path)
        await manager.stop_process("bytes")
        assert not os.path.exists(socket_path)

    run(scenario)
