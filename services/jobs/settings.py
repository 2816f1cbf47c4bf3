"""Settings shared by the gateway and the workers: where Redis and the artifacts live, job limits."""

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class JobSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETBOOTH_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    data_dir: Path = Path("./data")
    artifacts_url: str | None = Field(
        default=None, description="fsspec URL of the artifact store; default: <data_dir>/artifacts"
    )
    key_prefix: str = Field(default="detbooth", description="prefix of every Redis key the job store writes")
    job_ttl_s: int = Field(default=7 * 24 * 3600, ge=1, description="how long finished jobs are kept")
    events_maxlen: int = Field(default=1000, ge=10, description="events kept per job stream")
    finetune_time_limit_s: int = Field(default=6 * 3600, ge=10)
    generate_time_limit_s: int = Field(default=900, ge=10)
    unacked_restore_interval_s: int = Field(
        default=2, ge=1, description="how often Celery workers look for messages whose worker died"
    )
    visibility_timeout_s: int | None = Field(
        default=None,
        description="seconds before an unacknowledged task is delivered again; default: longest time limit + 10 min",
    )

    @model_validator(mode="after")
    def _check(self) -> "JobSettings":
        longest = max(self.finetune_time_limit_s, self.generate_time_limit_s)
        if self.visibility_timeout_s is not None and self.visibility_timeout_s <= longest:
            raise ValueError(
                f"DETBOOTH_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s} must exceed the longest job time "
                f"limit ({longest} s), or a running job would be delivered to a second worker"
            )
        return self

    @property
    def visibility_timeout(self) -> int:
        longest = max(self.finetune_time_limit_s, self.generate_time_limit_s)
        return self.visibility_timeout_s or longest + 600

    @property
    def artifacts_location(self) -> str:
        return self.artifacts_url or str((self.data_dir / "artifacts").resolve())
