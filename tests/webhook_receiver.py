"""A real HTTP server on loopback that receives webhooks and checks them with standardwebhooks' Webhook.verify."""

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any] | None  # None: the signature did not verify


@dataclass
class WebhookReceiver:
    secret: str = SECRET
    fail_first: int = 0  # answer 500 to this many requests before answering 204
    received: list[Received] = field(default_factory=list)
    calls: int = 0

    def __post_init__(self) -> None:
        receiver = self
        verifier = Webhook(self.secret)
        cond = self._cond = threading.Condition()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = verifier.verify(body, headers)
                except Exception:
                    payload = None
                with cond:
                    receiver.calls += 1
                    failing = receiver.calls <= receiver.fail_first
                    receiver.received.append(Received(headers, body, payload))
                    cond.notify_all()
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def wait_for(self, predicate, timeout: float = 30) -> list[Received]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.received), timeout):
                raise TimeoutError(f"webhooks so far: {[r.payload for r in self.received]}")
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
