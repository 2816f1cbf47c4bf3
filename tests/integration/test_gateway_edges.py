"""The gateway at its edges: keys one character off, the pixel cap to the pixel, the per-key stream cap."""

import io
import json
import time

import httpx
import pytest
from PIL import Image

from gateway.keys import hash_key, owner_of
from services.contracts.jobs import JobStatus, JobType, Progress
from services.jobs.redis_system import RedisJobSystem
from services.jobs.settings import JobSettings
from tests.procs import base_env, inprocess_gateway, start_gateway

VALID = "key-alice"


def _near_misses(key: str) -> list[str]:
    last = key[-1]
    return [
        key[:-1] + chr(ord(last) + 1),  # all but the last character
        key[:-1] + chr(ord(last) - 1),
        key[:-1],  # a prefix
        key + "e",  # the key as a prefix
        key[:-1] + "E",
        key.upper(),
        "x" * len(key),  # the same length
        key[1:] + key[0],
        hash_key(key),  # the stored digest is not a key
    ]


def test_near_miss_keys_are_refused(redis_server, tmp_path):
    env = base_env(redis_server, tmp_path, DETBOOTH_API_KEYS=f"{VALID},key-bob")
    with inprocess_gateway(env) as gw:
        assert gw.get("/jobs", headers={"Authorization": f"Bearer {VALID}"}).status_code == 200
        for wrong in _near_misses(VALID):
            for headers in ({"Authorization": f"Bearer {wrong}"}, {"X-API-Key": wrong}):
                r = gw.get("/jobs", headers=headers)
                assert r.status_code == 401, (wrong, r.status_code)
                assert r.headers["content-type"].startswith("application/problem+json")


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 40, 200)).save(buf, "PNG")
    return buf.getvalue()


# 32 x 34 = 1088 pixels, exactly the cap; 33 x 33 = 1089, one over (both sides meet the 32 px minimum of a
# 64 px fine-tune, so only the pixel cap can refuse them)
CAP = 1088
CONFIG = {"instance_prompt": "a photo of sks dog", "with_prior_preservation": False, "resolution": 64,
          "max_train_steps": 1}


@pytest.mark.parametrize("size,status", [((32, 34), 202), ((34, 32), 202), ((33, 33), 413)])
def test_the_gateways_own_pixel_cap_to_the_pixel(redis_server, tmp_path, size, status):
    env = base_env(redis_server, tmp_path, DETBOOTH_MAX_IMAGE_PIXELS=str(CAP))
    assert size[0] * size[1] - CAP in (0, 1)
    with inprocess_gateway(env) as gw:
        files = [("images", (f"{i}.png", _png(32, 34), "image/png")) for i in range(2)]
        files.append(("images", ("edge.png", _png(*size), "image/png")))
        r = gw.post("/finetune", headers={"Authorization": "Bearer key-alice"}, files=files,
                    data={"config": json.dumps(CONFIG)})
        assert r.status_code == status, r.text
        if status == 413:
            body = r.json()
            assert body["type"] == "urn:detbooth:problem:image-too-large" and f"limit is {CAP} pixels" in body["detail"]
            assert gw.get("/jobs", headers={"Authorization": "Bearer key-alice"}).json()["jobs"] == []


def _open(client: httpx.Client, url: str, key: str):
    return client.stream("GET", url, headers={"Authorization": f"Bearer {key}"})


def test_open_streams_are_capped_per_key_and_resume_from_last_event_id(redis_server, tmp_path, logs_dir, procs):
    env = base_env(redis_server, tmp_path, DETBOOTH_MAX_STREAMS_PER_KEY="2")
    gw, url = start_gateway(env, logs_dir)
    procs.append(gw)
    system = RedisJobSystem.from_settings(JobSettings(redis_url=redis_server, key_prefix=env["DETBOOTH_KEY_PREFIX"]))
    jobs = {}
    for key in ("key-alice", "key-bob"):
        job, _ = system.create(JobType.finetune, owner_of(hash_key(key)), {"config": {}})
        system.transition(job.id, JobStatus.running)
        jobs[key] = job.id
    events = f"{url}/jobs/{jobs['key-alice']}/events"
    with httpx.Client(timeout=30) as client:
        first, second = _open(client, events, "key-alice"), _open(client, events, "key-alice")
        a, b = first.__enter__(), second.__enter__()
        assert a.status_code == b.status_code == 200
        over = client.get(events, headers={"Authorization": "Bearer key-alice"})
        assert over.status_code == 429 and over.headers["content-type"].startswith("application/problem+json")
        assert over.json()["limit"] == "max_streams_per_key" and over.json()["value"] == 2
        with _open(client, f"{url}/jobs/{jobs['key-bob']}/events", "key-bob") as bobs:
            assert bobs.status_code == 200  # another key's streams are counted apart
        # the slot comes back when a stream ends
        second.__exit__(None, None, None)
        deadline = time.monotonic() + 10
        while (r := client.get(f"{url}/jobs/{jobs['key-alice']}", headers={"Authorization": "Bearer key-alice"})
               ).status_code == 200 and time.monotonic() < deadline:
            system.report_progress(jobs["key-alice"], Progress(step=1, total=2))
            with _open(client, events, "key-alice") as again:
                if again.status_code == 200:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the closed stream's slot never came back")
        # an open stream sees events as they happen, and a reconnect resumes after Last-Event-ID
        system.report_progress(jobs["key-alice"], Progress(step=2, total=2))
        system.transition(jobs["key-alice"], JobStatus.succeeded, result={})
        seen = []
        for line in a.iter_lines():
            if line.startswith("id:"):
                seen.append(line[3:].strip())
            if line.startswith("data:") and '"succeeded"' in line:
                break
        first.__exit__(None, None, None)
        resumed = client.get(events, headers={"Authorization": "Bearer key-alice", "Last-Event-ID": seen[-2]})
        ids = [line[3:].strip() for line in resumed.text.splitlines() if line.startswith("id:")]
        assert ids == [seen[-1]] and '"succeeded"' in resumed.text
