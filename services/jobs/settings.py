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
    # A running task's heartbeat (services/jobs/redis_system.py) keeps its message's unacked score fresh, so the
    # visibility timeout no longer bounds how long a job may run: it only sets how soon the task of a worker
    # that died (main process killed, machine lost) is delivered again, about visibility_timeout_s +
    # unacked_restore_interval_s after its last heartbeat.
    visibility_timeout_s: int = Field(
        default=60, ge=3,
        description="seconds without a heartbeat before an unacknowledged task is delivered again",
    )
    task_heartbeat_s: float = Field(
        default=5.0, gt=0, description="how often a running task refreshes its message and its job lease"
    )
    job_lease_s: int = Field(
        default=30, ge=2, description="a job's lease lapses this long after its worker's last heartbeat"
    )
    worker_heartbeat_s: float = Field(
        default=5.0, gt=0, description="how often a worker records that it is up; down after 3 missed beats"
    )

    sweep_interval_s: float = Field(
        default=600.0, gt=0, description="how often the gateway's sweeper removes expired, deleted and orphaned files"
    )
    orphan_grace_s: float = Field(
        default=3600.0, ge=0,
        description="files of a job with no record are removed once their newest is this old (deleted jobs: at once)",
    )
    webhook_secret: str | None = Field(
        default=None, description="`whsec_<base64>` secret that signs webhook deliveries; unset: webhooks off"
    )
    webhook_allow_private: bool = Field(
        default=False, description="allow webhook targets on private, loopback and link-local addresses"
    )
    webhook_max_attempts: int = Field(default=8, ge=1, le=50, description="tries per webhook delivery")
    webhook_retry_base_s: float = Field(
        default=5.0, gt=0, description="first retry delay; each further one is 4 times longer (capped at 6 h)"
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="how long a receiver may take to answer")
    webhook_progress_interval_s: float = Field(
        default=10.0, ge=0, description="at most one `progress` webhook per job this often"
    )

    @model_validator(mode="after")
    def _check(self) -> "JobSettings":
        if self.webhook_secret == "":  # an unset variable passed through (compose's ${VAR:-})
            self.webhook_secret = None
        if self.webhook_secret is not None:
            from standardwebhooks import Webhook

            try:
                if not self.webhook_secret.startswith("whsec_"):
                    raise ValueError("no whsec_ prefix")
                Webhook(self.webhook_secret)
            except Exception:
                raise ValueError("DETBOOTH_WEBHOOK_SECRET must be `whsec_` followed by base64 (at least 24 "
                                 "random bytes), e.g. whsec_$(openssl rand -base64 32)") from None
        if self.task_heartbeat_s * 3 > self.visibility_timeout_s:
            raise ValueError(
                f"DETBOOTH_TASK_HEARTBEAT_S={self.task_heartbeat_s} must be at most a third of "
                f"DETBOOTH_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s}, or a live task could be "
                "delivered to a second worker"
            )
        if not self.task_heartbeat_s * 2 <= self.job_lease_s <= self.visibility_timeout_s:
            raise ValueError(
                f"DETBOOTH_JOB_LEASE_S={self.job_lease_s} must be at least twice DETBOOTH_TASK_HEARTBEAT_S "
                f"({self.task_heartbeat_s}) and at most DETBOOTH_VISIBILITY_TIMEOUT_S "
                f"({self.visibility_timeout_s}), so a dead worker's lease has lapsed when its task comes back"
            )
        return self

    @property
    def visibility_timeout(self) -> int:
        return self.visibility_timeout_s

    @property
    def celery_keyprefix(self) -> str:
        """Kombu's global key prefix: every broker key (queues, unacked index) starts with it."""
        return f"{self.key_prefix}:celery:"

    @property
    def artifacts_location(self) -> str:
        return self.artifacts_url or str((self.data_dir / "artifacts").resolve())
