"""The gateway app in-process (create_app behind httpx over ASGI, lifespan run) on a real Redis; no worker runs
here. `python -m gateway` itself is started once, to check that it refuses to serve openly."""

import base64
import json

import httpx
import pytest

from tests.integration.conftest import ALICE, BOB, png_bytes
from tests.procs import inprocess_gateway

CONFIG = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog", "max_train_steps": 2,
          "resolution": 64}


def assert_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and "type" in body and "detail" in body
    return body


def finetune_files(n=3, **kw):
    return [("images", (f"{i}.png", png_bytes(**kw), "image/png")) for i in range(n)]


def test_health_and_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["redis"]["ok"] is True
    assert r.json()["checks"]["detection"]["ok"] is False  # nothing listens on the detection URL here
    assert "detbooth_gateway_requests_total" in client.get("/metrics").text
    assert "/finetune" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"X-API-Key": ""},
                                     {"Authorization": "Basic a2V5LWFsaWNl"}])
def test_missing_or_wrong_key_is_401(client, headers):
    body = assert_problem(client.get("/jobs", headers=headers), 401)
    assert "key" in body["detail"].lower()


def test_security_headers_and_no_cors_by_default(client):
    r = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in r.headers


def test_unknown_route_and_method_are_problems(client):
    assert_problem(client.get("/nope", headers=ALICE), 404)
    assert_problem(client.delete("/jobs", headers=ALICE), 405)


def test_finetune_creates_a_queued_job_with_inputs_stored(client, gateway):
    r = client.post("/finetune", headers=ALICE, files=finetune_files(), data={"config": json.dumps(CONFIG)})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["type"] == "finetune" and job["status"] == "queued" and r.headers["location"] == f"/jobs/{job['id']}"
    assert job["spec"]["config"]["instance_prompt"] == "a photo of sks dog"
    got = client.get(f"/jobs/{job['id']}", headers=ALICE).json()
    assert got["id"] == job["id"]
    # another key cannot see, cancel or download it
    assert_problem(client.get(f"/jobs/{job['id']}", headers=BOB), 404)
    assert_problem(client.post(f"/jobs/{job['id']}/cancel", headers=BOB), 404)
    assert_problem(client.get(f"/artifacts/jobs/{job['id']}/inputs/000.png", headers=BOB), 404)
    ok = client.get(f"/artifacts/jobs/{job['id']}/inputs/000.png", headers=ALICE)
    assert ok.status_code == 200 and ok.content == png_bytes()
    assert job["id"] in [j["id"] for j in client.get("/jobs", headers=ALICE).json()["jobs"]]
    assert job["id"] not in [j["id"] for j in client.get("/jobs", headers=BOB).json()["jobs"]]


def test_finetune_json_base64_works_too(client):
    images = [base64.b64encode(png_bytes()).decode() for _ in range(3)]
    r = client.post("/finetune", headers=ALICE, json={"images": images, "config": CONFIG})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize("files,config,status,word", [
    (finetune_files(2), CONFIG, 422, "3–20"),
    (finetune_files(3), {"class_prompt": "a dog"}, 422, "instance_prompt"),
    (finetune_files(3), "not json", 422, "JSON"),
    ([("images", ("a.png", b"not an image", "image/png"))] * 3, CONFIG, 415, "a.png"),
    ([("images", ("t.png", png_bytes()[:60], "image/png"))] * 3, CONFIG, 422, "t.png"),
    ([("images", ("z.png", b"", "image/png"))] * 3, CONFIG, 422, "empty"),
    (finetune_files(3, size=(20, 20)), CONFIG, 422, "32"),
    (finetune_files(3), {**CONFIG, "resolution": 512}, 422, "256"),
    (finetune_files(3), {**CONFIG, "base_model": "/etc"}, 422, "base_model"),
    (finetune_files(3), {**CONFIG, "devices": 2}, 422, "devices"),
    (finetune_files(3), {**CONFIG, "resolution": 65}, 422, "multiple of 8"),
    (finetune_files(21), CONFIG, 413, "20"),
])
def test_finetune_bad_input_is_a_clear_4xx_and_creates_nothing(client, files, config, status, word):
    before = client.get("/jobs", headers=ALICE).json()["jobs"]
    data = {"config": config if isinstance(config, str) else json.dumps(config)}
    body = assert_problem(client.post("/finetune", headers=ALICE, files=files, data=data), status)
    assert word.lower() in (body["detail"] + json.dumps(body.get("errors", ""))).lower()
    assert client.get("/jobs", headers=ALICE).json()["jobs"] == before


def test_upload_limits(client):
    big = b"\0" * 1_100_000  # over the 1 MB per-file limit of this gateway
    body = assert_problem(client.post("/finetune", headers=ALICE,
                                      files=[("images", ("b.png", big, "image/png"))] * 2, data={"config": "{}"}),
                          413)
    assert body["detail"] == "b.png is larger than 0.95 MiB"  # sizes as people read them, not raw bytes
    huge = b"\0" * 3_100_000  # over the 3 MB body limit: refused from Content-Length
    body = assert_problem(client.post("/detect", headers=ALICE,
                                      files=[("images", ("h.png", huge, "image/png"))]), 413)
    assert body["detail"] == "the request body is larger than 2.86 MiB"
    body = assert_problem(client.post("/detect", headers=ALICE,
                                      json={"images": [base64.b64encode(big).decode()]}), 413)
    assert body["detail"] == "images[0] is larger than 0.95 MiB"
    body = assert_problem(client.post("/detect", headers=ALICE, files=[("images", ("b.png", big, "image/png"))]),
                          413)
    assert body["detail"] == "b.png is larger than 0.95 MiB"

    def chunked():  # no Content-Length: refused while reading
        yield (b'--x\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(40):
            yield b"\0" * 100_000

    r = client.post("/detect", headers={**ALICE, "content-type": "multipart/form-data; boundary=x"}, content=chunked())
    assert_problem(r, 413)


def test_unsupported_media_type_and_bad_json(client):
    assert_problem(client.post("/detect", headers={**ALICE, "content-type": "text/plain"}, content=b"hi"), 415)
    assert_problem(client.post("/detect", headers={**ALICE, "content-type": "application/json"}, content=b"{"), 422)
    body = assert_problem(client.post("/detect", headers=ALICE, json={"images": ["***"]}), 422)
    assert "base64" in body["detail"]
    body = assert_problem(client.post("/detect", headers=ALICE, json={"images": ["aGk="], "params": {"thresh": 7}}),
                          422)
    assert "thresh" in body["detail"]


def _zip_bytes() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


@pytest.mark.parametrize("name,data", [("notes.txt", b"just some text\n" * 20), ("photos.zip", _zip_bytes()),
                                       ("scan.ico", None)])
def test_the_same_non_image_gets_the_same_415_on_every_route(client, name, data):
    """Multipart or JSON, /detect or /finetune: 415, the file named, the accepted formats listed, no repr."""
    if data is None:  # an image, but in a format the services do not take
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (32, 32)).save(buf, "ICO")
        data = buf.getvalue()
    b64 = base64.b64encode(data).decode()
    ok = [("images", (f"{i}.png", png_bytes(), "image/png")) for i in range(2)]
    answers = {
        "/detect multipart": client.post("/detect", headers=ALICE, files=[("images", (name, data, "text/plain"))]),
        "/detect json": client.post("/detect", headers=ALICE, json={"images": [b64]}),
        "/finetune multipart": client.post("/finetune", headers=ALICE, files=[*ok, ("images", (name, data, "x/y"))],
                                           data={"config": json.dumps(CONFIG)}),
        "/finetune json": client.post("/finetune", headers=ALICE, json={
            "images": [base64.b64encode(png_bytes()).decode()] * 2 + [b64], "config": CONFIG}),
    }
    for route, r in answers.items():
        body = assert_problem(r, 415)
        named = "images[0]" if route == "/detect json" else "images[2]" if route == "/finetune json" else name
        assert body["type"] == "urn:detbooth:problem:not-an-image" and body["title"] == "Unsupported media type", route
        assert body["detail"].startswith(f"{named} is "), (route, body)
        assert body["detail"].endswith("send images in one of these formats: PNG, JPEG, WebP, BMP, TIFF, GIF, "
                                       "PPM or JPEG 2000"), (route, body)
        assert "<" not in body["detail"] and "0x" not in body["detail"], (route, body)


def test_detection_down_is_503_quickly(client):
    r = client.post("/detect", headers=ALICE, files=[("images", ("a.png", png_bytes(), "image/png"))])
    body = assert_problem(r, 503)
    assert r.headers["retry-after"] and "detection" in body["detail"]


def test_generate_validation_and_unknown_model(client):
    body = assert_problem(client.post("/generate", headers=ALICE, json={"prompt": "x", "guidance_scale": 99}), 422)
    assert "guidance_scale" in body["detail"]
    assert_problem(client.post("/generate", headers=ALICE, json={"prompt": "x", "width": 65}), 422)
    assert_problem(client.post("/generate", headers=ALICE, json={"prompt": 5}), 422)
    body = assert_problem(client.post("/generate", headers=ALICE, json={"prompt": "x", "model": "nope"}), 404)
    assert "nope" in body["detail"]


def test_idempotency_key_over_http(client):
    h = {**ALICE, "Idempotency-Key": "gen-1"}
    first = client.post("/generate", headers=h, json={"prompt": "a dog", "num_inference_steps": 2})
    again = client.post("/generate", headers=h, json={"prompt": "a dog", "num_inference_steps": 2})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert_problem(client.post("/generate", headers=h, json={"prompt": "a cat"}), 422)
    assert_problem(client.post("/generate", headers={**ALICE, "Idempotency-Key": "bad key!"}, json={"prompt": "x"}),
                   422)


def test_cancel_queued_job_and_cancel_twice_conflicts(client):
    job = client.post("/generate", headers=ALICE, json={"prompt": "x"}).json()
    r = client.post(f"/jobs/{job['id']}/cancel", headers=ALICE)
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert_problem(client.post(f"/jobs/{job['id']}/cancel", headers=ALICE), 409)


def test_sse_stream_ends_on_terminal_status_and_resumes(client):
    job = client.post("/generate", headers=ALICE, json={"prompt": "x"}).json()
    client.post(f"/jobs/{job['id']}/cancel", headers=ALICE)
    text = client.get(f"/jobs/{job['id']}/events", headers=ALICE).text
    blocks = [b for b in text.split("\n\n") if b.startswith("id:")]
    assert len(blocks) == 2 and "canceled" in blocks[1]
    first_id = blocks[0].split("\n")[0][4:]
    resumed = client.get(f"/jobs/{job['id']}/events", headers={**ALICE, "Last-Event-ID": first_id}).text
    assert [b for b in resumed.split("\n\n") if b.startswith("id:")] == blocks[1:]


def test_pagination_over_http(client):
    made = [client.post("/generate", headers=BOB, json={"prompt": f"p{i}"}).json()["id"] for i in range(3)]
    page = client.get("/jobs", headers=BOB, params={"limit": 2}).json()
    rest = client.get("/jobs", headers=BOB, params={"limit": 2, "cursor": page["next_cursor"]}).json()
    seen = [j["id"] for j in page["jobs"] + rest["jobs"]]
    assert seen[:3] == made[::-1]
    # the README's loop starts with NEXT empty: an empty cursor is the first page
    assert client.get("/jobs", headers=BOB, params={"limit": 2, "cursor": ""}).json() == page
    assert_problem(client.get("/jobs", headers=BOB, params={"limit": 0}), 422)


def test_models_lists_base_and_fine_tunes_with_their_creation_time(client, gateway):
    import datetime

    import redis

    from gateway.auth import hash_key, owner_of
    from services.jobs.redis_system import RedisJobSystem

    models = client.get("/models", headers=ALICE).json()["models"]
    assert models[0]["id"] == "base" and models[0]["kind"] == "base"
    store = RedisJobSystem(redis.Redis.from_url(gateway[1]["DETBOOTH_REDIS_URL"]),
                           prefix=gateway[1]["DETBOOTH_KEY_PREFIX"])
    before = datetime.datetime.now(datetime.UTC)
    store.register_model(owner_of(hash_key("key-alice")), "m-new", {"method": "lora", "instance_prompt": "sks"})
    tuned = [m for m in client.get("/models", headers=ALICE).json()["models"] if m["id"] == "m-new"]
    assert len(tuned) == 1 and tuned[0]["kind"] == "finetune"
    created = datetime.datetime.fromisoformat(tuned[0]["created_at"])
    assert before - datetime.timedelta(seconds=1) <= created <= datetime.datetime.now(datetime.UTC)


def test_path_traversal_in_artifacts_is_404(client):
    for path in ["..%2F..%2Fetc%2Fpasswd", "jobs/../../etc/passwd", "jobs/x/..%2F..%2Fy"]:
        r = client.get(f"/artifacts/{path}", headers=ALICE)
        assert r.status_code == 404


def test_rate_limit_is_429_with_retry_after(redis_server, tmp_path):
    from tests.integration.conftest import base_env

    with inprocess_gateway(base_env(redis_server, tmp_path, DETBOOTH_RATE_LIMIT_PER_MINUTE="3")) as gw:
        codes = [gw.get("/jobs", headers=ALICE).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = gw.get("/jobs", headers=ALICE)
        assert_problem(r, 429)
        assert 1 <= int(r.headers["retry-after"]) <= 61
        assert gw.get("/jobs", headers=BOB).status_code == 200  # per key


def test_open_gateway_without_keys_is_refused(redis_server, logs_dir, tmp_path):
    from tests.integration.conftest import base_env
    from tests.procs import Proc, python_cmd

    env = base_env(redis_server, tmp_path, DETBOOTH_API_KEYS="", DETBOOTH_GATEWAY_HOST="0.0.0.0")
    proc = Proc("gateway-open", python_cmd("-m", "gateway"), env, logs_dir)
    assert proc.popen.wait(60) != 0
    assert "loopback" in proc.log()
    proc.stop()
