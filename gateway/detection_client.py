"""Forwarding detection requests to the detection service over HTTP."""

import logging
from typing import Any

import httpx

from services.contracts.problems import Problem

log = logging.getLogger(__name__)


def make_client(base_url: str, connect_timeout: float, timeout: float) -> httpx.AsyncClient:
    # retries=2 retries connection failures only: a request that reached the service is never sent twice
    transport = httpx.AsyncHTTPTransport(retries=2)
    return httpx.AsyncClient(base_url=base_url, transport=transport,
                             timeout=httpx.Timeout(timeout, connect=connect_timeout))


async def forward(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> httpx.Response:
    try:
        response = await client.request(method, path, **kw)
    except httpx.TimeoutException as e:
        raise Problem(504, "Detection timed out", "the detection service did not answer in time",
                      type_="detection-timeout") from e
    except httpx.TransportError as e:
        log.warning("detection service unreachable: %s", type(e).__name__)
        raise Problem(503, "Detection unavailable", "the detection service is not reachable; retry soon",
                      type_="detection-unavailable", headers={"Retry-After": "5"}) from e
    if response.status_code >= 500 and response.status_code not in (503, 504):
        raise Problem(502, "Detection failed", f"the detection service answered {response.status_code}",
                      type_="detection-failed")
    return response
