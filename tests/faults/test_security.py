"""Isolation and secrets: keys never logged, another key's things are 404, CORS only when configured."""

import httpx
import pytest

from tests.integration.conftest import ALICE, BOB, base_env
from tests.integration.test_gateway_detection import text_png
from tests.procs import inprocess_gateway

pytestmark = pytest.mark.slow


@pytest.mark.fault("another key's job / artifact / model; path escapes",
                   "404 for bob on alice's job, cancel, events, images; ../ and encoded escapes 404")
def test_isolation_and_path_escapes(full_stack):
    alice = httpx.Client(base_url=full_stack.url, headers=ALICE, timeout=60)
    bob = httpx.Client(base_url=full_stack.url, headers=BOB, timeout=60)
    r = alice.post("/generate", headers={"Prefer": "wait=5"},
                   json={"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 2, "seed": 1})
    job_id = r.json()["id"]
    job = alice.get(f"/jobs/{job_id}").json()
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/events", f"/artifacts/jobs/{job_id}/images/0.png"):
        assert bob.get(path).status_code == 404, path
    assert bob.post(f"/jobs/{job_id}/cancel").status_code == 404
    assert job_id not in [j["id"] for j in bob.get("/jobs").json()["jobs"]]
    for escape in ("../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/%2e%2e/etc/passwd", "jobs/../../x",
                   "/etc/passwd", "jobs/%00/x"):
        assert alice.get(f"/artifacts/{escape}").status_code == 404, escape
    assert job["status"] in ("queued", "running", "succeeded")


@pytest.mark.fault("API keys in logs", "after requests with both keys (ok and failing), no key string in the "
                                       "gateway, worker or detection logs")
def test_keys_never_logged(full_stack):
    with httpx.Client(base_url=full_stack.url, timeout=60) as c:
        c.post("/detect", headers=ALICE, files=[("images", ("t.png", text_png(), "image/png"))])
        c.post("/generate", headers={**BOB, "Prefer": "wait=5"},
               json={"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 2})
        c.get("/jobs", headers={"Authorization": "Bearer key-wrong-secret"})
        c.get("/nope", headers=ALICE)
        c.post("/generate", headers=ALICE, content=b"{bad")
    logs = {"gateway": full_stack.gateway.log(), "worker": full_stack.worker.log(),
            "detection": full_stack.detection.log()}
    assert all(logs.values())
    for name, text in logs.items():
        for key in ("key-alice", "key-bob", "key-wrong-secret"):
            assert key not in text, f"{key} appears in the {name} log"


@pytest.mark.fault("CORS", "no CORS headers by default; DETBOOTH_CORS_ORIGINS allows exactly those origins")
def test_cors_on_only_when_configured(full_stack, redis_server, tmp_path):
    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    r = httpx.options(f"{full_stack.url}/detect", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    env = base_env(redis_server, tmp_path / "data", DETBOOTH_CORS_ORIGINS="https://app.example")
    with inprocess_gateway(env) as gw:
        r = gw.options("/detect", headers=pre)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = gw.options("/detect", headers={**pre, "Origin": "https://evil.example"})
        assert r.headers.get("access-control-allow-origin") != "https://evil.example"
        r = gw.get("/models", headers={**ALICE, "Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        for h in ("x-content-type-options", "x-frame-options", "referrer-policy"):
            assert h in r.headers
