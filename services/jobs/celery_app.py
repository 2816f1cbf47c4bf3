"""The Celery app shared by the gateway (which sends tasks by name) and the workers (which run them)."""

from celery import Celery
from kombu import Queue

from services.jobs.settings import JobSettings


def make_celery(settings: JobSettings | None = None) -> Celery:
    s = settings or JobSettings()
    app = Celery("detbooth", broker=s.redis_url, backend=None)
    app.conf.update(
        task_acks_late=True,  # a task is acknowledged when it ends, so a dead worker's task is delivered again
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,  # one task per GPU; start one worker per GPU
        task_queues=(Queue("finetune"), Queue("generate")),
        task_default_queue="generate",
        task_routes={"detbooth.finetune": {"queue": "finetune"}, "detbooth.generate": {"queue": "generate"}},
        task_annotations={
            "detbooth.finetune": {"time_limit": s.finetune_time_limit_s + 60,
                                  "soft_time_limit": s.finetune_time_limit_s},
            "detbooth.generate": {"time_limit": s.generate_time_limit_s + 30,
                                  "soft_time_limit": s.generate_time_limit_s},
        },
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": s.visibility_timeout,
            "unacked_restore_interval": s.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
            "global_keyprefix": s.celery_keyprefix,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app
