"""Per-call overhead of the Python binding: queries per second, and
start_process latency through the binding against the Rust API in the
same process, on the same daemon.

    python bench.py [--rounds N] [--json]

The daemon is $TEND_BENCH_DAEMON, else the repo's release testd
(cargo build --release -p testd), else ../fixtures/daemon.py.
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tend
from tend import _native

HERE = Path(__file__).resolve().parent


def daemon():
    if os.environ.get("TEND_BENCH_DAEMON"):
        return os.environ["TEND_BENCH_DAEMON"], []
    testd = HERE.parents[1] / "target" / "release" / "testd"
    if testd.exists():
        return str(testd), []
    return sys.executable, [str(HERE.parent / "fixtures" / "daemon.py")]


def per_second(calls, body):
    begin = time.perf_counter_ns()
    for _ in range(calls):
        body()
    ns = time.perf_counter_ns() - begin
    return {"calls": calls, "per_second": round(calls * 1e9 / ns), "ns_per_call": round(ns / calls)}


def summary(samples):
    ordered = sorted(samples)
    return {
        "rounds": len(ordered),
        "median_ms": round(statistics.median(ordered), 2),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 2),
    }


async def main(rounds, as_json):
    command, args = daemon()
    with tempfile.TemporaryDirectory(prefix="tb-", dir="/tmp") as directory:
        sock = lambda name: os.path.join(directory, f"{name}.sock")  # noqa: E731
        manager = tend.BackgroundProcessManager()
        try:
            await manager.start_process(plugin_name="q", command=command, args=args, socket_path=sock("q"))
            results = {
                "daemon": " ".join(Path(part).name for part in [command, *args]),
                "is_running": per_second(200_000, lambda: manager.is_running("q")),
                "state": per_second(200_000, lambda: manager.state("q")),
                "process_info": per_second(100_000, lambda: manager.process_info("q")),
            }
            is_running_ns, process_info_ns = _native._bench_rust_queries(manager, "q", 100_000)
            results["rust"] = {
                "is_running_ns_per_call": round(is_running_ns),
                "process_info_ns_per_call": round(process_info_ns),
            }
            # Rounds alternate between the binding (timed here) and the
            # Rust API (timed in Rust, on a second manager of this process),
            # so both see the same load.
            direct = tend.BackgroundProcessManager()
            python_starts, rust_starts = [], []
            for _ in range(rounds):
                begin = time.perf_counter()
                await manager.start_process(plugin_name="s", command=command, args=args, socket_path=sock("s"))
                python_starts.append((time.perf_counter() - begin) * 1000)
                await manager.stop_process("s")
                rust_starts.append(_native._bench_rust_start_stop(direct, command, args, sock("r")))
            await direct.stop_all_processes()
            results["start_process"] = {"python": summary(python_starts), "rust": summary(rust_starts)}
        finally:
            await manager.stop_all_processes()
    if as_json:
        print(json.dumps(results, indent=2))
        return
    print(f"daemon: {results['daemon']}")
    for key in ("is_running", "state", "process_info"):
        r = results[key]
        print(f"{key:<15} {r['per_second']:>12,} calls/s  ({r['ns_per_call']:,} ns/call)")
    r = results["rust"]
    print(f"rust API        is_running {r['is_running_ns_per_call']:,} ns/call, "
          f"process_info {r['process_info_ns_per_call']:,} ns/call")
    s = results["start_process"]
    print(f"start_process   python {s['python']['median_ms']} ms median, {s['python']['p90_ms']} ms p90; "
          f"rust {s['rust']['median_ms']} ms median, {s['rust']['p90_ms']} ms p90 ({rounds} rounds)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    asyncio.run(main(options.rounds, options.json))
