"""Every Redis key name of the job system, in one place. The Celery ones follow Kombu's Redis transport."""

from services.contracts.jobs import JobType


class Keys:
    """Every Redis key name of the job system (the Celery ones follow Kombu's transport)."""

    def __init__(self, prefix: str, celery_keyprefix: str | None = None):
        self.prefix = prefix
        self.celery_keyprefix = celery_keyprefix if celery_keyprefix is not None else f"{prefix}:celery:"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:events"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:lease"

    def owner_jobs(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:jobs"

    @property
    def owner_prefix(self) -> str:
        return f"{self.prefix}:owner:"

    def in_flight(self, owner: str, job_type: JobType | str) -> str:
        """The owner's jobs of a type that hold a slot (queued or running), scored by when it was taken."""
        return f"{self.owner_prefix}{owner}:inflight:{JobType(job_type).value}"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}:idem:{owner}:{key}"

    def model(self, model_id: str) -> str:
        return f"{self.prefix}:model:{model_id}"

    def owner_models(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:models"

    def claim(self, job_id: str) -> str:
        return f"{self.prefix}:gen:claim:{job_id}"

    def claim_result(self, job_id: str) -> str:
        return f"{self.prefix}:gen:result:{job_id}"

    def rate(self, owner: str, window: int) -> str:
        return f"{self.prefix}:ratelimit:{owner}:{window}"

    def queue(self, name: str) -> str:
        """Kombu's Redis list of a queue's waiting messages."""
        return f"{self.celery_keyprefix}{name}"

    @property
    def unacked_index(self) -> str:
        """Kombu's sorted set of delivered, unacknowledged messages (scored by delivery time)."""
        return f"{self.celery_keyprefix}unacked_index"

    # the data lifecycle (services/jobs/redis_lifecycle.py)
    @property
    def deleted(self) -> str:
        return f"{self.prefix}:deleted"

    def owner_storage(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}:storage"

    @property
    def storage_owner(self) -> str:
        """job id -> owner of every job whose files are counted (so that expired jobs can be uncounted)."""
        return f"{self.prefix}:storage:owner"

    @property
    def indexed(self) -> str:
        return f"{self.prefix}:meta:indexed"

    def lock(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    @property
    def webhooks_due(self) -> str:
        return f"{self.prefix}:webhooks:due"

    def webhook(self, delivery_id: str) -> str:
        return f"{self.prefix}:webhook:{delivery_id}"

    def webhook_progress(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}:webhook-progress"

    # monitoring (services/jobs/monitoring.py)
    def stats_running(self, job_type: str) -> str:
        return f"{self.prefix}:stats:running:{job_type}"

    @property
    def stats_jobs(self) -> str:
        return f"{self.prefix}:stats:jobs"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"
