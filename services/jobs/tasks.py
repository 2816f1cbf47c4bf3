"""Names, queues and payloads of the Celery tasks. The gateway sends by name; workers register the bodies."""

from pydantic import BaseModel

from services.contracts.jobs import JobType

FINETUNE_TASK = "detbooth.finetune"
GENERATE_TASK = "detbooth.generate"

TASK_FOR_TYPE: dict[JobType, str] = {JobType.finetune: FINETUNE_TASK, JobType.generate: GENERATE_TASK}
QUEUE_FOR_TYPE: dict[JobType, str] = {JobType.finetune: "finetune", JobType.generate: "generate"}


class TaskPayload(BaseModel):
    """Both tasks take only the job id: everything else is in the job record and the artifact store."""

    job_id: str
