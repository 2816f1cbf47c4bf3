"""API-key authentication and the per-owner rate limit, as FastAPI dependencies (keys: gateway/keys.py)."""

import logging
from typing import Annotated

from fastapi import Depends, Request

from gateway.keys import ANONYMOUS, KeyRing, hash_key, owner_of  # noqa: F401 - re-exported for callers
from gateway.state import State
from services.contracts.problems import Problem

log = logging.getLogger(__name__)


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


async def authenticate(request: Request, state: State) -> str:
    """The caller's owner id. Without configured keys (loopback only) every caller is `anonymous`."""
    if not state.keys.configured:
        return ANONYMOUS
    key = _presented_key(request)
    if not key:
        raise Problem(401, "Unauthorized", "send an API key as `Authorization: Bearer <key>` or `X-API-Key`",
                      headers={"WWW-Authenticate": "Bearer"})
    # a dict lookup on the key's SHA-256: equal time for every wrong key, and the key itself is never kept
    owner = state.keys.owner_for(key)
    if owner is not None:
        return owner
    raise Problem(401, "Unauthorized", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})


async def rate_limit(owner: Annotated[str, Depends(authenticate)], state: State) -> str:
    """Fixed one-minute window per owner, shared by every gateway replica (gateway/rate_limit.py)."""
    decision = await state.rate.hit(owner)
    if not decision.allowed:
        raise Problem(429, "Too many requests", f"more than {decision.limit} requests this minute for this key",
                      headers={"Retry-After": str(decision.retry_after_s)})
    return owner


Caller = Annotated[str, Depends(rate_limit)]


