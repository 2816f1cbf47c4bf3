"""Webhook outbox, signing, retries and target checks against a real receiver on loopback and a real Redis."""

import json
import time
from types import SimpleNamespace

import pytest
import redis
from pydantic import ValidationError

from services.jobs.redis_system import RedisJobSystem
from services.jobs.webhooks import (
    WebhookDispatcher,
    WebhookEvent,
    WebhookRefused,
    WebhookRequest,
    WebhookSender,
    emit,
    resolve_target,
)
from tests.webhook_receiver import SECRET, WebhookReceiver


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def outbox(redis_server, key_prefix):
    outbox = RedisJobSystem(redis.Redis.from_url(redis_server), key_prefix).webhooks
    outbox.progress_interval_s = 60
    return outbox


def dispatcher(outbox, *, allow_private=True, max_attempts=4, secret=SECRET):
    sender = WebhookSender(secret, allow_private=allow_private, timeout_s=5)
    return WebhookDispatcher(outbox, sender, max_attempts=max_attempts, retry_base_s=0.05, poll_s=0.05).start()


def fake_job(url: str, events=("start", "progress", "completed")):
    from datetime import UTC, datetime

    from services.contracts.jobs import Job, JobType

    return Job(id="j" * 32, type=JobType.generate, owner="o", created_at=datetime.now(UTC),
               spec={"webhook": {"url": url, "events": list(events)}, "inputs": ["secret/input.png"]})


def test_deliveries_are_signed_and_retried_with_the_same_id(outbox, receiver):
    receiver.fail_first = 2
    d = dispatcher(outbox)
    try:
        assert emit(outbox, fake_job(receiver.url), WebhookEvent.completed)
        got = receiver.wait_for(lambda rs: len(rs) >= 3)
    finally:
        d.stop()
    assert len({r.headers["webhook-id"] for r in got}) == 1  # receivers dedupe on it
    assert all(r.payload is not None for r in got), "Webhook.verify refused a delivery"
    body = got[-1].payload
    assert body["type"] == "job.completed" and body["data"]["id"] == "j" * 32
    assert "spec" not in body["data"] and "owner" not in body["data"]
    assert outbox.pending() == 0
    # a receiver holding another secret refuses the signature
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJD" * 8).verify(got[-1].body, got[-1].headers)


def test_a_failing_receiver_gets_max_attempts_then_nothing(outbox, receiver):
    receiver.fail_first = 100
    d = dispatcher(outbox, max_attempts=3)
    try:
        outbox.put(receiver.url, {"type": "job.start", "timestamp": "t", "data": {}})
        receiver.wait_for(lambda rs: len(rs) >= 3)
        deadline = time.monotonic() + 5
        while outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        d.stop()
    assert receiver.calls == 3 and outbox.pending() == 0


def test_delivery_time_check_refuses_a_name_that_now_resolves_to_loopback(outbox, receiver):
    """DNS rebinding: a target accepted earlier is resolved and checked again when it is sent."""
    d = dispatcher(outbox, allow_private=False, max_attempts=2)
    try:
        outbox.put(receiver.url.replace("127.0.0.1", "localhost"), {"type": "job.start", "data": {}})
        deadline = time.monotonic() + 5
        while outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        d.stop()
    assert outbox.pending() == 0 and receiver.calls == 0


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/x", "http://localhost/x", "http://10.1.2.3/x", "http://192.168.0.7/x",
    "http://172.16.5.5/x", "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://0.0.0.0/x",
    "http://[::ffff:127.0.0.1]/x", "http://100.64.0.1/x", "http://[fd00::1]/x", "http://224.0.0.1/x",
    "ftp://example.com/x", "not a url", "http:///nohost", "http://no-such-host.invalid/x",
])
def test_private_loopback_and_odd_targets_are_refused(url):
    with pytest.raises(WebhookRefused):
        resolve_target(url, allow_private=False)


def test_public_literal_passes_and_private_passes_when_allowed():
    parsed, address = resolve_target("https://93.184.215.14:8443/hook", allow_private=False)
    assert address == "93.184.215.14" and parsed.port == 8443
    assert resolve_target("http://127.0.0.1:9/x", allow_private=True)[1] == "127.0.0.1"


def test_emit_follows_the_chosen_events_and_throttles_progress(outbox):
    job = fake_job("http://127.0.0.1:9/x", events=("progress", "completed"))
    assert emit(outbox, job, WebhookEvent.start) is None
    assert emit(outbox, job, WebhookEvent.progress) is not None
    assert emit(outbox, job, WebhookEvent.progress) is None  # within progress_interval_s
    assert emit(outbox, job, WebhookEvent.completed) is not None
    assert outbox.pending() == 2
    no_hook = fake_job("x")
    no_hook.spec = {}
    assert emit(outbox, no_hook, WebhookEvent.completed) is None


def test_emit_never_raises_when_redis_is_gone():
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = RedisJobSystem(redis.Redis(port=9, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)), "x").webhooks
    assert emit(dead, fake_job("http://127.0.0.1:9/x"), WebhookEvent.completed) is None


def test_request_fields():
    assert WebhookRequest(webhook="https://a.example/h", webhook_events="start, completed").spec() == {
        "url": "https://a.example/h", "events": ["start", "completed"]}
    assert WebhookRequest(webhook="https://a.example/h").spec()["events"] == ["start", "progress", "completed"]
    for bad in ("", "finished", ["start", "nope"]):
        with pytest.raises(ValidationError):
            WebhookRequest(webhook="https://a.example/h", webhook_events=bad)


def test_secret_setting_is_checked():
    from services.jobs.settings import JobSettings

    assert JobSettings(webhook_secret=SECRET).webhook_secret == SECRET
    for bad in ("plain", "whsec_", "whsec_!!!not-base64"):
        with pytest.raises(ValidationError, match="DETBOOTH_WEBHOOK_SECRET"):
            JobSettings(webhook_secret=bad)
