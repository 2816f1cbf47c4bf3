"""API-key authentication and the per-key rate limit, as FastAPI dependencies."""

import hashlib
import hmac
import logging
import time
from typing import Annotated

from fastapi import Depends, Request

from gateway.state import State
from services.contracts.problems import Problem

log = logging.getLogger(__name__)
ANONYMOUS = "anonymous"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of(key_hash: str) -> str:
    """Owner ids are derived from the key's hash, so neither the key nor its full hash is ever stored."""
    return hashlib.sha256(f"owner:{key_hash}".encode()).hexdigest()[:24]


def load_key_hashes(keys: list[str]) -> dict[str, str]:
    return {hash_key(k): owner_of(hash_key(k)) for k in keys}


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def authenticate(request: Request, state: State) -> str:
    """The caller's owner id. Without configured keys (loopback only) every caller is `anonymous`."""
    if not state.key_hashes:
        return ANONYMOUS
    key = _presented_key(request)
    if not key:
        raise Problem(401, "Unauthorized", "send an API key as `Authorization: Bearer <key>` or `X-API-Key`",
                      headers={"WWW-Authenticate": "Bearer"})
    digest = hash_key(key)
    for known, owner in state.key_hashes.items():
        if hmac.compare_digest(known, digest):
            return owner
    raise Problem(401, "Unauthorized", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})


def rate_limit(owner: Annotated[str, Depends(authenticate)], state: State) -> str:
    """Fixed one-minute window per key, counted in Redis so every gateway replica shares it."""
    limit = state.settings.rate_limit_per_minute
    now = time.time()
    window = int(now // 60)
    key = f"{state.store.prefix}:ratelimit:{owner}:{window}"
    pipe = state.store.r.pipeline()
    pipe.incr(key)
    pipe.expire(key, 61)
    count = pipe.execute()[0]
    if count > limit:
        retry = max(1, int((window + 1) * 60 - now) + 1)
        raise Problem(429, "Too many requests", f"more than {limit} requests this minute for this key",
                      headers={"Retry-After": str(retry)})
    return owner


Caller = Annotated[str, Depends(rate_limit)]


