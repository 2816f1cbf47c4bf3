"""Request metrics and standard security headers."""

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("detbooth_gateway_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("detbooth_gateway_request_seconds", "HTTP request latency", ["method", "route"])

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class MetricsAndHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")  # the template, so ids don't explode the label set
            REQUESTS.labels(scope["method"], name, str(status)).inc()
            LATENCY.labels(scope["method"], name).observe(time.perf_counter() - start)
