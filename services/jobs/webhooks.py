"""Webhooks in the Standard Webhooks format (https://www.standardwebhooks.com), through a Redis outbox.

A job that asked for a webhook gets a delivery put in the outbox when it starts, makes progress (at most
one per `webhook_progress_interval_s`) and ends: the job system does it on each of those status changes,
whoever makes them (worker, batching worker, gateway cancel). Putting it there is one Redis write, wrapped
so that it can never fail the job; the job never waits on the receiver. A dispatcher thread in each gateway takes due
deliveries (atomically, so replicas never send one twice at the same time), signs them with
`DETBOOTH_WEBHOOK_SECRET` through the `standardwebhooks` package, POSTs them, and on any failure puts them
back with exponential back-off until `webhook_max_attempts`. The outbox is in Redis, so deliveries survive a
gateway restart; a dispatcher that dies mid-delivery lets the claim lapse and another one sends it again
(receivers dedupe on `webhook-id`, which stays the same across attempts, as the standard asks).

Targets are http(s) URLs whose host resolves to public addresses only, unless `webhook_allow_private`.
The host is resolved again at each delivery, checked again, and the request goes to the address that was
checked (with the original Host header and TLS server name), so a name that re-binds to a private address
after the submit-time check (DNS rebinding) is not reached.
"""

import ipaddress
import logging
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import redis

from services.contracts.webhooks import ALL_EVENTS, WebhookEvent, WebhookRequest  # noqa: F401 - used by callers

log = logging.getLogger(__name__)


class WebhookRefused(ValueError):
    """The URL is not an acceptable webhook target; the message says why."""


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve_target(url: str, *, allow_private: bool) -> tuple[httpx.URL, str]:
    """The parsed URL and the address to connect to; WebhookRefused when it is not acceptable.

    Every address the host resolves to must be public (a name with one private address among public ones
    could be steered to it), unless private targets are allowed.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        raise WebhookRefused(f"not a valid URL: {e}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise WebhookRefused("use an http:// or https:// URL with a host name")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise WebhookRefused(f"the host {parsed.host!r} does not resolve ({e})") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise WebhookRefused(f"the host {parsed.host!r} does not resolve")
    if not allow_private:
        bad = [a for a in addresses if not _public(ipaddress.ip_address(a.split("%")[0]))]
        if bad:
            raise WebhookRefused(f"the host {parsed.host!r} resolves to a private, loopback or reserved address "
                                 f"({bad[0]}); webhooks go to public addresses only")
    return parsed, addresses[0]


def event_payload(job: Any, event: WebhookEvent) -> dict[str, Any]:
    """The Standard Webhooks body: `type`, `timestamp`, `data` (the job, without its inputs and owner)."""
    data = job.model_dump(mode="json", include={"id", "type", "status", "created_at", "started_at",
                                                "finished_at", "progress", "metrics", "result", "error",
                                                "attempts"})
    data["url"] = f"/jobs/{job.id}"
    return {"type": f"job.{event.value}", "timestamp": datetime.now(UTC).isoformat(), "data": data}


class Outbox(Protocol):
    """Where deliveries wait (implemented by the job system's adapter: services/jobs/redis_system.py)."""

    def put(self, url: str, payload: dict[str, Any], *, job_id: str = "", due: float | None = None) -> str: ...
    def progress_allowed(self, job_id: str) -> bool: ...
    def claim(self, *, lease_s: float, limit: int = 16) -> list[dict[str, Any]]: ...
    def settle(self, delivery_id: str) -> None: ...
    def retry_at(self, delivery_id: str, when: float) -> int: ...
    def pending(self) -> int: ...


def emit(outbox: Outbox, job: Any, event: WebhookEvent) -> str | None:
    """Queue `event` for the job's webhook, if it asked for one. Never raises: a webhook is a side line."""
    try:
        target = (job.spec or {}).get("webhook")
        if not target or event.value not in target.get("events", ()):
            return None
        if event == WebhookEvent.progress and not outbox.progress_allowed(job.id):
            return None
        return outbox.put(target["url"], event_payload(job, event), job_id=job.id)
    except Exception:
        log.warning("webhook %s for job %s could not be queued", event.value, job.id, exc_info=True)
        return None


class WebhookSender:
    """Signs and POSTs one delivery to an address checked at this very moment."""

    def __init__(self, secret: str, *, allow_private: bool, timeout_s: float = 10.0):
        from standardwebhooks import Webhook

        self.signer = Webhook(secret)
        self.allow_private = allow_private
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False)

    def headers(self, delivery_id: str, body: str, at: datetime | None = None) -> dict[str, str]:
        at = at or datetime.now(UTC)
        return {"webhook-id": delivery_id, "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": self.signer.sign(delivery_id, at, body),
                "content-type": "application/json", "user-agent": "DetBooth-Webhooks/1"}

    def send(self, delivery_id: str, url: str, body: str) -> int:
        """The receiver's status code; raises WebhookRefused or httpx.HTTPError when it cannot be sent."""
        parsed, address = resolve_target(url, allow_private=self.allow_private)
        pinned = parsed.copy_with(host=address)
        extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
        headers = {**self.headers(delivery_id, body), "host": parsed.netloc.decode("ascii")}
        response = self.client.post(pinned, content=body.encode(), headers=headers, extensions=extensions)
        return response.status_code

    def close(self) -> None:
        self.client.close()


def backoff_s(attempt: int, base_s: float, cap_s: float = 6 * 3600) -> float:
    """Delay before attempt `attempt + 1` (attempt ≥ 1): base · 4^(attempt-1), ±10 % jitter, capped."""
    delay = min(base_s * 4 ** (attempt - 1), cap_s)
    return delay * random.uniform(0.9, 1.1)


class WebhookDispatcher:
    """A daemon thread: claim due deliveries, send them on a small pool, settle or reschedule each."""

    def __init__(self, outbox: Outbox, sender: WebhookSender, *, max_attempts: int, retry_base_s: float,
                 poll_s: float = 0.5, workers: int = 4):
        self.outbox, self.sender = outbox, sender
        self.max_attempts, self.retry_base_s, self.poll_s = max_attempts, retry_base_s, poll_s
        self.lease_s = sender.client.timeout.read * 3 + 5 if sender.client.timeout.read else 60
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhook-dispatcher", daemon=True)
        self.sent = 0

    def start(self) -> "WebhookDispatcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.sender.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = self.outbox.claim(lease_s=self.lease_s)
            except redis.RedisError as e:  # Redis restarting: deliveries wait in the outbox
                log.warning("webhook outbox unavailable: %s", type(e).__name__)
                batch = []
            for futures in [self._pool.submit(self.deliver, d) for d in batch]:
                futures.result()
            if not batch:
                self._stop.wait(self.poll_s)

    def deliver(self, d: dict[str, Any]) -> bool:
        attempt = d["attempts"] + 1
        try:
            status = self.sender.send(d["id"], d["url"], d["body"])
            ok, why = 200 <= status < 300, f"HTTP {status}"
            final = ok or status == 410  # 410 Gone: the receiver asks for no more
        except WebhookRefused as e:
            ok, why, final = False, str(e), False
        except httpx.HTTPError as e:
            ok, why, final = False, type(e).__name__, False
        try:
            if ok or final or attempt >= self.max_attempts:
                if not ok:
                    log.warning("webhook %s (%s) to %s dropped after %d attempt(s): %s", d["id"], d.get("type"),
                                d["url"], attempt, why)
                self.outbox.settle(d["id"])
            else:
                log.info("webhook %s to %s failed (%s); attempt %d of %d", d["id"], d["url"], why, attempt,
                         self.max_attempts)
                self.outbox.retry_at(d["id"], time.time() + backoff_s(attempt, self.retry_base_s))
        except redis.RedisError:
            pass  # the claim lapses and it is tried again
        if ok:
            self.sent += 1
        return ok


def start_webhook_dispatcher(outbox: Outbox, settings: Any) -> WebhookDispatcher | None:
    """The gateway's delivery thread (None when no secret is set: then no job can ask for a webhook).

    It runs in the gateway rather than in a Celery worker: workers run one GPU task at a time (prefetch 1),
    so a delivery queued behind a six-hour fine-tune would wait six hours, while the gateway is always up,
    already does I/O for a living, and every replica can share the outbox safely.
    """
    if not settings.webhook_secret:
        return None
    sender = WebhookSender(settings.webhook_secret, allow_private=settings.webhook_allow_private,
                           timeout_s=settings.webhook_timeout_s)
    return WebhookDispatcher(outbox, sender,
                             max_attempts=settings.webhook_max_attempts,
                             retry_base_s=settings.webhook_retry_base_s).start()
