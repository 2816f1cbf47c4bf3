"""Hostile input to the gateway: each is a quick 4xx, and the stack keeps serving afterwards."""

import socket
import struct
import time
import zlib
from urllib.parse import urlparse

import httpx
import pytest

from tests.integration.test_gateway_detection import text_png

pytestmark = pytest.mark.slow
ALICE = {"Authorization": "Bearer key-alice"}


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


@pytest.fixture
def client(full_stack):
    with httpx.Client(base_url=full_stack.url, headers=ALICE, timeout=30) as c:
        yield c


def _still_serving(client):
    assert client.get("/healthz").status_code == 200
    r = client.post("/detect", files=[("images", ("t.png", text_png(), "image/png"))])
    assert r.status_code == 200 and r.json()["results"][0]["boxes"], r.text


def _quick_4xx(r: httpx.Response, took: float, *allowed: int):
    assert r.status_code in allowed, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/problem+json")
    assert took < 5, took


def _timed(fn, *args, **kw):
    t0 = time.monotonic()
    r = fn(*args, **kw)
    return r, time.monotonic() - t0


@pytest.mark.fault("decompression bomb (PNG header 100000x100000)",
                   "413 from the header for /detect (multipart + base64) and /finetune; no decode")
def test_decompression_bomb(client):
    import base64

    bomb = bomb_png()
    r, t = _timed(client.post, "/detect", files=[("images", ("b.png", bomb, "image/png"))])
    _quick_4xx(r, t, 413)
    r, t = _timed(client.post, "/detect", json={"images": [base64.b64encode(bomb).decode()]})
    _quick_4xx(r, t, 413)
    files = [("images", (f"{i}.png", bomb, "image/png")) for i in range(3)]
    r, t = _timed(client.post, "/finetune", files=files,
                                      data={"config": '{"instance_prompt": "a sks dog", "class_prompt": "a dog"}'})
    _quick_4xx(r, t, 413, 422)
    _still_serving(client)


@pytest.mark.fault("oversized multipart body (with and without Content-Length)",
                   "413 before the whole body is read; nothing stored")
def test_oversized_multipart(client, full_stack):
    big = b"\0" * 3_500_000  # over DETBOOTH_MAX_TOTAL_BYTES (3 MB)
    r, t = _timed(client.post, "/detect", files=[("images", ("a.png", big, "image/png"))])
    _quick_4xx(r, t, 413)

    def chunks():
        for _ in range(40):
            yield b"--x\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a\"\r\n\r\n" + b"\0" * 100_000

    r, t = _timed(client.post, "/finetune", content=chunks(),
                  headers={"Content-Type": "multipart/form-data; boundary=x"})
    _quick_4xx(r, t, 413)
    assert client.get("/jobs").json()["jobs"] == [] or all(
        j["type"] != "finetune" for j in client.get("/jobs").json()["jobs"])
    _still_serving(client)


@pytest.mark.fault("slow upload (1 byte / 0.5 s)", "408 within the body read timeout (3 s here); no hung request")
def test_slow_upload_is_cut_off(client, full_stack, fault_note):
    u = urlparse(full_stack.url)
    with socket.create_connection((u.hostname, u.port), timeout=15) as s:
        s.sendall(b"POST /detect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer key-alice\r\n"
                  b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n"
                  b"--x\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n"
                  b"Content-Type: image/png\r\n\r\n")
        t0 = time.monotonic()
        s.settimeout(0.5)
        answer = b""
        while time.monotonic() - t0 < 12 and not answer:
            try:
                s.sendall(b"\0")
                answer = s.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert took < 8, took
    fault_note(f"cut off after {took:.1f} s")
    _still_serving(client)


@pytest.mark.fault("invalid UTF-8 in JSON bodies and form fields", "4xx problem, never 5xx")
def test_invalid_utf8(client):
    for path in ("/generate", "/detect", "/finetune"):
        r, t = _timed(client.post, path, content=b'{"prompt": "\xff\xfe\xfa", "images": ["\xc3\x28"]}',
                                          headers={"Content-Type": "application/json"})
        _quick_4xx(r, t, 400, 422)
    body = (b"--x\r\nContent-Disposition: form-data; name=\"config\"\r\n\r\n{\"instance_prompt\": \"\xff\xfe\"}\r\n"
            b"--x\r\nContent-Disposition: form-data; name=\"box_thresh\"\r\n\r\n\xc3\x28\r\n--x--\r\n")
    for path in ("/finetune", "/detect"):
        r, t = _timed(client.post, path, content=body,
                                          headers={"Content-Type": "multipart/form-data; boundary=x"})
        _quick_4xx(r, t, 400, 413, 415, 422)
    _still_serving(client)


@pytest.mark.fault("deeply nested JSON (100k levels)", "4xx problem, never 5xx; the gateway stays up")
def test_deeply_nested_json(client):
    for deep in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        for path in ("/generate", "/detect", "/finetune"):
            r, t = _timed(client.post, path, content=deep, headers={"Content-Type": "application/json"})
            _quick_4xx(r, t, 400, 413, 422)
    body = b"--x\r\nContent-Disposition: form-data; name=\"config\"\r\n\r\n" + b"[" * 100_000 + b"\r\n--x--\r\n"
    r, t = _timed(client.post, "/finetune", content=body,
                                      headers={"Content-Type": "multipart/form-data; boundary=x"})
    _quick_4xx(r, t, 400, 413, 422)
    _still_serving(client)
