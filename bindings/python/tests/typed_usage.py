"""Checked by mypy --strict in bindings/run-tests (pytest does not collect
it): the API as an app uses it type-checks against the stubs."""

import asyncio
from typing import Any, Optional

import tend


async def main() -> None:
    manager = tend.BackgroundProcessManager()
    events = manager.events()
    await manager.start_process(
        plugin_name="my-plugin",
        command="python3",
        args=["daemon.py"],
        plugin_path="/path/to/plugin",
        socket_path="/tmp/my-plugin.sock",
        env={"PORT": "8080"},
        startup_timeout=tend.PLUGIN_TIMEOUTS["BACKGROUND_PROCESS_STARTUP"],
        healthcheck={"interval": 30.0, "timeout": 5.0, "retries": 3},
        max_restart_attempts=3,
        restart_delay=5.0,
    )
    running: bool = manager.is_running("my-plugin")
    state: Optional[str] = manager.state("my-plugin")
    pid: Optional[int] = manager.pid("my-plugin")
    info = manager.process_info("my-plugin")
    if info is not None:
        failed: int = info.failed_health_checks
        last_error: Optional[str] = info.last_error
        print(info.state == tend.ProcessState.RUNNING, info.restart_attempts, failed, last_error)
    async for event in events:
        print(event.name, event.from_state, event.to_state, event.reason, event.pid)
        break
    for line in manager.logs("my-plugin", 10):
        print(line.stream, line.text)
    reply: Any = await manager.call("my-plugin", "ping", timeout=5.0)
    print(running, state, pid, reply)
    try:
        await manager.stop_process("my-plugin")
    except tend.TendError as error:
        print(error)
    await manager.stop_all_processes()


if __name__ == "__main__":
    asyncio.run(main())
