"""The optional per-owner storage quota (`DETBOOTH_STORAGE_QUOTA_BYTES`), checked before a job is made."""

from services.contracts.problems import Problem
from gateway.state import AppState


def check_storage_quota(state: AppState, owner: str, incoming_bytes: int) -> None:
    """413 problem+json naming the limit when the owner's stored bytes plus this request's exceed the quota."""
    quota = state.settings.storage_quota_bytes
    if quota is None:
        return
    used = state.store.storage_used(owner)
    if used + incoming_bytes > quota:
        raise Problem(413, "Storage quota exceeded",
                      f"this owner's artifacts take {used} bytes; with this request's {incoming_bytes} that is over "
                      f"the storage quota of {quota} bytes (DETBOOTH_STORAGE_QUOTA_BYTES). Delete jobs or models "
                      "(DELETE /jobs/{id}, DELETE /models/{id}) to make room",
                      type_="storage-quota-exceeded", limit="storage_quota_bytes", quota_bytes=quota,
                      used_bytes=used)
