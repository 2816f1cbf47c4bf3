"""The gateway under waiting clients: many open event streams and `Prefer: wait` requests, on loopback.

    python bench/load_gateway.py [--streams 1000] [--waits 50] [--keys 20] [--probes 300]

Starts its own Redis and one gateway (uvicorn, one process) on 127.0.0.1 and no worker, so jobs stay queued
and every `Prefer: wait=60` request really waits. Baseline, in the same run: the idle gateway. Then it opens
`--streams` event streams (`GET /jobs/{id}/events`, spread over `--keys` API keys, below the per-key cap) and
`--waits` `POST /generate` with `Prefer: wait=60`, publishes progress events to the followed jobs, and
measures `/healthz` and `GET /jobs/{id}` latency (p50/p99) while all of them are open.
Targets (issue 11): /healthz p99 < 50 ms, GET /jobs/{id} p99 < 100 ms. Prints one JSON line.
"""

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.auth import hash_key, owner_of  # noqa: E402
from services.contracts.jobs import JobStatus, JobType, Progress  # noqa: E402
from services.jobs.redis_system import RedisJobSystem  # noqa: E402
from services.jobs.settings import JobSettings  # noqa: E402
from tests.procs import free_port, redis_binary  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2) if xs else float("nan")


def probe(paths: list[tuple[str, str, dict]], n: int, gap_s: float) -> dict:
    """`n` sequential requests per path (round robin), `gap_s` apart: latency in ms and failures.

    Runs in its own process, so the latency is the gateway's, not this bench's own busy event loop's."""
    lat: dict[str, list[float]] = {name: [] for name, _, _ in paths}
    failures = 0
    with httpx.Client(timeout=30) as client:
        for i in range(n * len(paths)):
            name, url, headers = paths[i % len(paths)]
            t0 = time.perf_counter()
            try:
                ok = client.get(url, headers=headers).status_code == 200
            except httpx.HTTPError:
                ok = False
            lat[name].append((time.perf_counter() - t0) * 1000)
            failures += not ok
            time.sleep(gap_s)
    return {name: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "max_ms": round(max(v), 2), "n": len(v)}
            for name, v in lat.items()} | {"failures": failures}


async def follow(client: httpx.AsyncClient, url: str, key: str, opened: list[int], seen: list[int],
                 refused: list[int]) -> None:
    try:
        async with client.stream("GET", url, headers={"Authorization": f"Bearer {key}"}, timeout=None) as r:
            if r.status_code != 200:
                refused.append(r.status_code)
                return
            opened.append(1)
            async for chunk in r.aiter_bytes():  # counting ids is enough, and cheap
                seen.append(chunk.count(b"\nid: ") + chunk.startswith(b"id: "))
    except (httpx.HTTPError, asyncio.CancelledError):
        pass


async def wait_request(client: httpx.AsyncClient, url: str, key: str, out: list[tuple[int, float]]) -> None:
    t0 = time.perf_counter()
    try:
        r = await client.post(f"{url}/generate", json={"prompt": "a photo of sks dog", "width": 64, "height": 64,
                                                       "num_inference_steps": 1},
                              headers={"Authorization": f"Bearer {key}", "Prefer": "wait=60"}, timeout=90)
        out.append((r.status_code, time.perf_counter() - t0))
    except (httpx.HTTPError, asyncio.CancelledError):
        pass


async def run(a: argparse.Namespace, url: str, keys: list[str], system: RedisJobSystem) -> dict:
    owners = [owner_of(hash_key(k)) for k in keys]
    # one running fine-tune per key, followed by that key's streams; no worker ever finishes them
    jobs = []
    for owner in owners:
        job, _ = system.create(JobType.finetune, owner, {"config": {}})
        system.transition(job.id, JobStatus.running)
        jobs.append(job.id)
    limits = httpx.Limits(max_connections=a.streams + a.waits + 50, max_keepalive_connections=a.streams + 50)
    auth = {"Authorization": f"Bearer {keys[0]}"}
    paths = [("healthz", f"{url}/healthz", {}), ("get_job", f"{url}/jobs/{jobs[0]}", auth)]
    loop = asyncio.get_running_loop()
    prober = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    baseline = await loop.run_in_executor(prober, probe, paths, a.probes // 3, a.gap_s)
    log(f"baseline (idle): {baseline}")
    async with httpx.AsyncClient(limits=limits) as streams_client:
        opened, seen, refused, waited = [], [], [], []
        tasks = [asyncio.create_task(follow(streams_client, f"{url}/jobs/{jobs[i % len(keys)]}/events",
                                            keys[i % len(keys)], opened, seen, refused))
                 for i in range(a.streams)]
        t_open = time.perf_counter()
        while len(opened) + len(refused) < a.streams and time.perf_counter() - t_open < 120:
            await asyncio.sleep(0.2)
        open_s = time.perf_counter() - t_open
        log(f"{len(opened)} streams open ({len(refused)} refused) in {open_s:.1f} s")
        # the waits start once every stream is open, so all of them are still waiting while we measure
        waits = [asyncio.create_task(wait_request(streams_client, url, keys[i % len(keys)], waited))
                 for i in range(a.waits)]
        await asyncio.sleep(2)

        stop_events = asyncio.Event()

        async def publish() -> None:  # progress on every followed job, like training steps
            step = 0
            while not stop_events.is_set():
                step += 1
                for job_id in jobs:
                    await asyncio.to_thread(system.report_progress, job_id, Progress(step=step, total=10**6),
                                            {"loss": 0.1, "it_per_s": 2.0})
                with contextlib.suppress(TimeoutError):  # the next round, or the end of the run
                    await asyncio.wait_for(stop_events.wait(), a.event_gap_s)

        publisher = asyncio.create_task(publish())
        log(f"{a.waits} Prefer: wait requests sent; probing")
        loaded = await loop.run_in_executor(prober, probe, paths, a.probes, a.gap_s)
        log(f"loaded: {loaded}")
        prober.shutdown()
        stop_events.set()
        await publisher
        still_open = sum(1 for t in tasks if not t.done())
        waits_open = sum(1 for t in waits if not t.done())
        for t in [*tasks, *waits]:
            t.cancel()
        await asyncio.gather(*tasks, *waits, return_exceptions=True)
    return {
        "streams_requested": a.streams, "streams_open": len(opened), "streams_refused": len(refused),
        "streams_still_open_at_end": still_open, "stream_events_received": sum(seen),
        "waits_requested": a.waits, "waits_still_open_at_end": waits_open,
        "waits_answered": [f"{s} after {t:.0f} s" for s, t in waited[:3]], "open_s": round(open_s, 2),
        "baseline_idle": baseline, "loaded": loaded,
        "ratio_p99_loaded_vs_idle": {k: round(loaded[k]["p99_ms"] / max(baseline[k]["p99_ms"], 1e-3), 2)
                                     for k in ("healthz", "get_job")},
        "targets_met": {"healthz_p99_lt_50ms": loaded["healthz"]["p99_ms"] < 50,
                        "get_job_p99_lt_100ms": loaded["get_job"]["p99_ms"] < 100},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--waits", type=int, default=50)
    ap.add_argument("--keys", type=int, default=20, help="API keys the streams are spread over")
    ap.add_argument("--probes", type=int, default=300, help="requests per probed route while loaded")
    ap.add_argument("--gap-s", type=float, default=0.02, help="pause between probe requests")
    ap.add_argument("--event-gap-s", type=float, default=1.0,
                    help="pause between rounds of progress events (one per followed job and round)")
    a = ap.parse_args()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops Redis and the gateway
    tmp = Path(tempfile.mkdtemp(prefix="load-gateway-"))
    redis_port, gw_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    keys = [f"bench-key-{i:03d}-{os.urandom(6).hex()}" for i in range(a.keys)]
    procs = []
    try:
        procs.append(start([redis_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--maxclients", "20000"], dict(os.environ), tmp / "redis.log"))
        wait_until(lambda: redis.Redis.from_url(redis_url).ping(), 20, "redis did not start")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DETBOOTH_")}
        env.update({"DETBOOTH_REDIS_URL": redis_url, "DETBOOTH_KEY_PREFIX": "bench", "DETBOOTH_DATA_DIR": str(tmp),
                    "DETBOOTH_API_KEYS": ",".join(keys), "DETBOOTH_GATEWAY_HOST": "127.0.0.1",
                    "DETBOOTH_GATEWAY_PORT": str(gw_port), "DETBOOTH_DETECTION_URL": "http://127.0.0.1:9",
                    "DETBOOTH_RATE_LIMIT_PER_MINUTE": "1000000", "DETBOOTH_MAX_WAIT_S": "60"})
        procs.append(start([sys.executable, "-m", "gateway"], env, tmp / "gateway.log"))
        url = f"http://127.0.0.1:{gw_port}"
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 60, "gateway did not start")
        system = RedisJobSystem.from_settings(JobSettings(redis_url=redis_url, key_prefix="bench"))
        result = asyncio.run(run(a, url, keys, system))
        result["gateway_log_errors"] = [line for line in (tmp / "gateway.log").read_text().splitlines()
                                        if "ERROR" in line or "Traceback" in line][:5]
        print(json.dumps(result))
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
