"""Supervise long-running plugin daemons from asyncio apps, on tend's Rust
supervisor.

    import tend

    manager = tend.BackgroundProcessManager()
    await manager.start_process(
        plugin_name="my-plugin",
        command="python3",
        args=["daemon.py"],
        plugin_path="/path/to/plugin",
        socket_path="/run/user/1000/my-plugin.sock",
        startup_timeout=30.0,
    )
    manager.is_running("my-plugin")   # True
    await manager.stop_all_processes()

Durations are seconds (floats); states are the lower-case strings of
``ProcessState``. Awaitables run on tend's runtime and never block the
event loop; queries are safe from any thread. When the interpreter exits,
raises or is killed, tend's guard process stops the daemons it left.
"""

import json as _json
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

from . import _native
from ._native import (
    EventIterator,
    LogLine,
    ProcessEvent,
    ProcessInfo,
    TendError,
    default_state_dir,
)

if TYPE_CHECKING:
    from ._native import HealthCheck

_Path = Union[str, "os.PathLike[str]"]

__all__ = [
    "BackgroundProcessManager",
    "EventIterator",
    "LogLine",
    "PLUGIN_TIMEOUTS",
    "ProcessEvent",
    "ProcessInfo",
    "ProcessState",
    "TendError",
    "default_state_dir",
]


class ProcessState:
    """The lower-case state names that ``state()`` and ``process_info()``
    return, as in the seed and the CLI's JSON."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


#: The seed's timing constants, in seconds (and counts), matching tend's
#: defaults.
PLUGIN_TIMEOUTS = {
    "BACKGROUND_PROCESS_STARTUP": 30.0,
    "BACKGROUND_PROCESS_SHUTDOWN_GRACE_PERIOD": 5.0,
    "BACKGROUND_PROCESS_HEALTH_CHECK_INTERVAL": 30.0,
    "BACKGROUND_PROCESS_HEALTH_CHECK_TIMEOUT": 5.0,
    "BACKGROUND_PROCESS_MAX_HEALTH_CHECK_FAILURES": 3,
    "BACKGROUND_PROCESS_MAX_RESTART_ATTEMPTS": 3,
    "BACKGROUND_PROCESS_RESTART_DELAY": 5.0,
}


#: Managers that started daemons and were not stopped with
#: stop_all_processes. The native manager kills its daemons when it is
#: freed (as the Rust one does when dropped); this reference keeps a
#: manager the app no longer refers to, and its daemons, until it is
#: stopped, as with the seed.
_live_managers: "set[BackgroundProcessManager]" = set()


class BackgroundProcessManager(_native.BackgroundProcessManager):
    """Supervises plugin daemons: starts them, waits for their socket,
    health-checks and restarts them, stops them with their whole process
    group.

    The native methods hand back an awaitable bound to the running event
    loop; these wrappers are coroutine functions, so a call may also be
    made outside a loop (``asyncio.run(manager.stop_all_processes())``)."""

    async def start_process(
        self,
        *,
        plugin_name: str,
        command: "_Path",
        args: Optional[Sequence[str]] = None,
        plugin_path: Optional["_Path"] = None,
        socket_path: Optional["_Path"] = None,
        env: Optional[Mapping[str, str]] = None,
        startup_timeout: Optional[float] = None,
        shutdown_grace_period: Optional[float] = None,
        healthcheck: Optional["HealthCheck"] = None,
        max_restart_attempts: Optional[int] = None,
        restart_delay: Optional[float] = None,
        log_file: Optional["_Path"] = None,
    ) -> None:
        """Starts a daemon; returns once its socket accepts a connection.
        Durations are seconds; ``healthcheck`` is
        ``{"interval": s, "timeout": s, "retries": n}``. Raises
        ``TendError`` with the reason (the daemon's stderr tail included);
        after ``stop_all_processes``, with "Cannot start process during
        shutdown"; ``ValueError`` for a bad duration or key."""
        _live_managers.add(self)
        await super().start_process(
            plugin_name=plugin_name,
            command=command,
            args=args,
            plugin_path=plugin_path,
            socket_path=socket_path,
            env=env,
            startup_timeout=startup_timeout,
            shutdown_grace_period=shutdown_grace_period,
            healthcheck=healthcheck,
            max_restart_attempts=max_restart_attempts,
            restart_delay=restart_delay,
            log_file=log_file,
        )

    async def stop_process(self, plugin_name: str) -> None:
        """Stops a daemon with its whole process group (SIGTERM, SIGKILL
        after its grace period); returns when no member is left."""
        await super().stop_process(plugin_name)

    async def restart_process(self, plugin_name: str) -> None:
        """Stops, then starts a daemon with the config it last had."""
        await super().restart_process(plugin_name)

    async def stop_all_processes(self) -> None:
        """Stops every daemon in parallel; later starts are refused."""
        await super().stop_all_processes()
        _live_managers.discard(self)

    async def call(
        self,
        plugin_name: str,
        method: str,
        params: Any = None,
        timeout: Optional[float] = None,
    ) -> Any:
        """A JSON-RPC 2.0 call over the daemon's socket (one persistent
        connection per daemon); returns the result, raises ``TendError``
        with the daemon's error."""
        reply = await self._call_json(plugin_name, method, _json.dumps(params), timeout)
        return _json.loads(reply)
