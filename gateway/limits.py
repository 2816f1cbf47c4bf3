"""Per-owner limits on fine-tuning, from the settings: caps on one job's cost (422) and a count of fine-tunes
in flight (429), each a problem naming the limit and its value."""

from contextlib import suppress

import redis

from gateway.settings import GatewaySettings
from gateway.state import AppState
from services.contracts.finetune import FinetuneConfig
from services.contracts.jobs import JobType
from services.contracts.problems import Problem

FINETUNE = JobType.finetune.value


def check_caps(config: FinetuneConfig, s: GatewaySettings) -> None:
    caps = [("max_train_steps", config.max_train_steps, "max_train_steps", s.max_train_steps),
            ("resolution", config.resolution, "max_resolution", s.max_resolution)]
    if config.with_prior_preservation:  # class images are only made with prior preservation
        caps.append(("num_class_images", config.num_class_images, "max_class_images", s.max_class_images))
    for field, value, limit, cap in caps:
        if value > cap:
            raise Problem(422, "Over a limit", f"config.{field} is {value}; this deployment allows at most {cap} "
                          f"({limit}, DETBOOTH_{limit.upper()})", type_="limit-exceeded", limit=limit, value=cap)


class FinetuneSlot:
    """The owner's in-flight slot for a new fine-tune: taken, atomically with the count, just before the job is
    created; given back if nothing was queued. The job store gives it back when the job ends."""

    def __init__(self, state: AppState, owner: str, idempotency_key: str | None):
        self.state = state
        self.owner = owner
        self.idempotency_key = idempotency_key
        self.taken: list[str] = []

    def take(self, job_id: str) -> None:
        store, limit = self.state.store, self.state.settings.max_active_finetunes
        if self.idempotency_key and store.idempotent_job_id(self.owner, self.idempotency_key):
            return  # a replay: its first job holds the slot
        in_flight = store.inflight.reserve(self.owner, FINETUNE, job_id, limit)
        if in_flight is not None:
            raise Problem(429, "Too many fine-tunes", f"this key already has {in_flight} fine-tunes queued or "
                          f"running; at most {limit} (max_active_finetunes, DETBOOTH_MAX_ACTIVE_FINETUNES): wait "
                          "for one to finish or cancel one", type_="limit-exceeded", headers={"Retry-After": "60"},
                          limit="max_active_finetunes", value=limit)
        self.taken.append(job_id)

    def give_back(self) -> None:
        with suppress(redis.RedisError):  # else it lapses by itself: its job record never appears
            for job_id in self.taken:
                self.state.store.inflight.release(self.owner, FINETUNE, job_id)
        self.taken.clear()
