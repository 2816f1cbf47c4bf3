"""Bounded locust run against a running gateway's /detect: rps, p50/p99, errors, RSS before/after and peak.

    python bench/load_detect.py --url http://127.0.0.1:8000 --key KEY --requests 10000 \
        --pids gateway=PID detection=PID [--shapes 64 --seed 1]
    python bench/load_detect.py --stack --requests 10000     # starts Redis + detection (as shipped) + gateway
Prints one JSON line. Used by tests/faults/test_load.py with a small --requests.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def rss_mb(pid: int) -> float:
    """RSS of a process and its children (MB)."""
    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
        return round(sum(x.memory_info().rss for x in procs if x.is_running()) / 2**20, 1)
    except psutil.Error:  # it exited between the two calls
        return 0.0


class PeakRSS:
    """Samples each process's RSS every `interval_s` on a thread; `peak` is the highest seen per name."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.1) -> None:
        self.pids, self.interval_s = pids, interval_s
        self.peak = {k: rss_mb(v) for k, v in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_mb(pid))

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run(url: str, key: str, requests: int, users: int, pids: dict[str, int], timeout_s: int = 900,
        shapes: int = 8, seed: int = 0, max_side: int = 1000) -> dict:
    before = {k: rss_mb(v) for k, v in pids.items()}
    with tempfile.TemporaryDirectory() as tmp, PeakRSS(pids) as peak:
        env = {**os.environ, "LOAD_REQUESTS": str(requests), "LOAD_KEY": key, "LOAD_SHAPES": str(shapes),
               "LOAD_SEED": str(seed), "LOAD_MAX_SIDE": str(max_side)}
        proc = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile_detect.py"), "--headless",
             "-u", str(users), "-r", str(users), "--host", url, "--run-time", f"{timeout_s}s",
             "--csv", f"{tmp}/load", "--only-summary", "--loglevel", "WARNING"],
            check=False, env=env, capture_output=True, text=True, timeout=timeout_s + 60)
        with open(f"{tmp}/load_stats.csv") as f:
            rows = {r["Name"]: r for r in csv.DictReader(f)}
    after = {k: rss_mb(v) for k, v in pids.items()}
    total = rows["Aggregated"]
    n, fails = int(total["Request Count"]), int(total["Failure Count"])
    return {"requests": n, "failures": fails, "error_rate": round(fails / max(n, 1), 4),
            "rps": round(float(total["Requests/s"]), 1), "p50_ms": float(total["50%"]),
            "p99_ms": float(total["99%"]), "shapes": shapes, "seed": seed, "rss_mb_before": before,
            "rss_mb_after": after, "rss_mb_peak": peak.peak,
            "locust_rc": proc.returncode, "locust_tail": proc.stderr[-1500:] if proc.returncode else ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--key")
    ap.add_argument("--stack", action="store_true", help="start Redis, the detection service and a gateway here")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--shapes", type=int, default=64, help="distinct image sizes")
    ap.add_argument("--seed", type=int, default=0, help="which sizes (another seed: other sizes)")
    ap.add_argument("--max-side", type=int, default=1000)
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--pids", nargs="*", default=[], help="name=pid of each service to watch")
    a = ap.parse_args()
    pids = {k: int(v) for k, v in (p.split("=") for p in a.pids)}
    if not a.stack:
        print(json.dumps(run(a.url, a.key, a.requests, a.users, pids, a.timeout, a.shapes, a.seed, a.max_side)))
        return
    sys.path.insert(0, str(HERE.parent))
    from bench.detect_bench import KEY, Stack

    with tempfile.TemporaryDirectory(prefix="load-detect-") as tmp:
        stack = Stack(os.cpu_count() or 1, Path(tmp), Path.home() / ".cache" / "detbooth-bench")
        try:
            print(json.dumps({"serving": stack.readiness.get("precision", {}).get("engine")}), flush=True)
            pids = {"gateway": stack.gateway.pid, "detection": stack.detection.proc.pid}
            print(json.dumps(run(stack.url, KEY, a.requests, a.users, pids, a.timeout, a.shapes, a.seed,
                                 a.max_side)))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
