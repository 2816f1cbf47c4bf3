"""The selectable noise schedulers, each built fresh per call (schedulers keep per-run state)."""

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from services.contracts.generate import SchedulerName

_CLASSES: dict[SchedulerName, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    SchedulerName.ddim: (DDIMScheduler, {}),
    SchedulerName.dpmsolver_pp: (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    SchedulerName.euler: (EulerDiscreteScheduler, {}),
    SchedulerName.euler_a: (EulerAncestralDiscreteScheduler, {}),
    SchedulerName.pndm: (PNDMScheduler, {"skip_prk_steps": True}),
}


def make_scheduler(name: SchedulerName | str, model_config: dict[str, Any]) -> SchedulerMixin:
    """A new scheduler of kind `name` with the model's noise schedule (betas, prediction type, offsets)."""
    cls, overrides = _CLASSES[SchedulerName(name)]
    if cls is DDIMScheduler:  # a PNDM config has no clip_sample; DDIM's default (True) would clip SD latents
        overrides = {"clip_sample": model_config.get("clip_sample", False)}
    return cls.from_config(model_config, **overrides)
