"""The model catalogue (`GET /models`): the generation models an owner can use, and the detection models the
deployment loads."""

from datetime import datetime

from pydantic import BaseModel, Field

from services.contracts.detect import DetectionModelList


class ModelView(BaseModel):
    id: str
    kind: str = Field(description="`base` or `finetune`")
    base_model: str | None = None
    method: str | None = None
    instance_prompt: str | None = None
    created_at: datetime | None = None


class ModelList(BaseModel):
    models: list[ModelView] = Field(description="generation: the base model and the caller's fine-tunes")
    detection: DetectionModelList | None = Field(
        default=None, description="the detection models this deployment loads, with the precision each serves at "
                                  "(null when the detection service did not answer)")
