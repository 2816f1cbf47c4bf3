"""The gateway's settings: environment variables prefixed DETBOOTH_ (see the README's table)."""

import ipaddress
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.keys import BadKeyEntry, parse_key_entries
from services.contracts.limits import UploadLimits


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETBOOTH_", extra="ignore")

    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=1, le=65535)
    access_log: bool = Field(default=False, description="a log line per request (uvicorn's); requests are counted "
                             "and timed in /metrics either way. Off: it cost ~6 % of the gateway's CPU per /detect")
    api_keys: str = Field(default="", description="comma-separated API keys: `owner:key` or a bare `key`")
    api_keys_file: Path | None = Field(
        default=None, description="file with one `owner:key` or bare key per line; re-read when it changes")
    detection_url: str = "http://127.0.0.1:8001"
    detection_connect_timeout_s: float = Field(default=2.0, gt=0)
    detection_timeout_s: float = Field(default=60.0, gt=0)
    sd_base_model: str | None = Field(default=None, description="base model id shown by GET /models")
    rate_limit_per_minute: int = Field(default=600, ge=1, description="requests per API key per minute")
    # files, bytes, pixels and pages: the same variables the detection service reads
    limits: UploadLimits = Field(default_factory=UploadLimits)
    body_read_timeout_s: float = Field(default=120.0, gt=0, description="longest time to receive a request body")
    max_wait_s: float = Field(default=60.0, ge=0, description="longest `Prefer: wait=N` honoured")
    max_streams_per_key: int = Field(default=100, ge=1,
                                     description="event streams one API key may hold open on one gateway process")
    allowed_base_models: str = Field(
        default="", description="comma-separated base models a fine-tune may name; empty: only the default")
    cors_origins: str = Field(default="", description="comma-separated origins allowed by CORS; empty: CORS off")
    # per-owner limits on fine-tuning (a GPU-hours budget, not a validity rule: the config allows more)
    max_active_finetunes: int = Field(default=2, ge=1, description="fine-tunes one key may have queued or running")
    max_train_steps: int = Field(default=5000, ge=1, description="largest config.max_train_steps accepted")
    max_class_images: int = Field(default=400, ge=1, description="largest config.num_class_images accepted")
    max_resolution: int = Field(default=1024, ge=64, description="largest config.resolution accepted")
    storage_quota_bytes: int | None = Field(
        default=None, ge=1, description="artifact bytes one owner may keep; a new job over it gets 413; unset: none")

    @property
    def keys(self) -> list[str]:
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file is not None:
            lines = self.api_keys_file.read_text().splitlines()
            keys += [k.strip() for k in lines if k.strip() and not k.startswith("#")]
        return keys

    @property
    def loopback_only(self) -> bool:
        try:
            return ipaddress.ip_address(self.gateway_host).is_loopback
        except ValueError:
            return self.gateway_host == "localhost"

    @model_validator(mode="after")
    def _refuse_open_gateway(self) -> "GatewaySettings":
        if self.api_keys_file is not None and not self.api_keys_file.is_file():
            raise ValueError(f"DETBOOTH_API_KEYS_FILE={self.api_keys_file} does not exist")
        try:
            parse_key_entries(self.keys)
        except BadKeyEntry as e:
            raise ValueError(f"DETBOOTH_API_KEYS / DETBOOTH_API_KEYS_FILE: {e}") from None
        if not self.keys and not self.loopback_only:
            raise ValueError(
                f"DETBOOTH_GATEWAY_HOST={self.gateway_host} is not a loopback address and no API keys are set: "
                "set DETBOOTH_API_KEYS or DETBOOTH_API_KEYS_FILE, or serve on 127.0.0.1"
            )
        return self
