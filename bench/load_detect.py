"""Bounded locust run against a running gateway's /detect: rps, p50/p99, errors, RSS before/after.

    python bench/load_detect.py --url http://127.0.0.1:8000 --key KEY --requests 10000 \
        --pids gateway=PID detection=PID
Prints one JSON line. Used by tests/faults/test_load.py with a small --requests.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def rss_mb(pid: int) -> float:
    """RSS of a process and its children (MB)."""
    p = psutil.Process(pid)
    procs = [p, *p.children(recursive=True)]
    return round(sum(x.memory_info().rss for x in procs if x.is_running()) / 2**20, 1)


def run(url: str, key: str, requests: int, users: int, pids: dict[str, int], timeout_s: int = 900) -> dict:
    before = {k: rss_mb(v) for k, v in pids.items()}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LOAD_REQUESTS": str(requests), "LOAD_KEY": key}
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
            "p99_ms": float(total["99%"]), "rss_mb_before": before, "rss_mb_after": after,
            "locust_rc": proc.returncode, "locust_tail": proc.stderr[-1500:] if proc.returncode else ""}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--pids", nargs="*", default=[], help="name=pid of each service to watch")
    a = ap.parse_args()
    pids = {k: int(v) for k, v in (p.split("=") for p in a.pids)}
    print(json.dumps(run(a.url, a.key, a.requests, a.users, pids)))


if __name__ == "__main__":
    main()
