"""The caller's account (`GET /whoami`): its owner id, the limits that apply to it, its storage use."""

from pydantic import BaseModel, Field


class Storage(BaseModel):
    bytes: int = Field(description="bytes the owner's jobs and models take in the artifact store")
    quota_bytes: int | None = Field(default=None, description="the storage quota; null: none")


class WhoAmI(BaseModel):
    owner: str = Field(description="the owner id the API key belongs to (all keys of one owner share it)")
    limits: dict[str, int | float | None] = Field(description="the limits that apply to this owner")
    storage: Storage
