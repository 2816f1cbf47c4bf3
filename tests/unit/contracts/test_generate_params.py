import pytest
from pydantic import ValidationError

from services.contracts.generate import GenerateParams, SchedulerName


def _error_fields(**kw) -> set[str]:
    with pytest.raises(ValidationError) as e:
        GenerateParams(**{"prompt": "a photo of sks dog", **kw})
    return {".".join(str(p) for p in err["loc"]) for err in e.value.errors()}


def test_defaults_are_valid():
    p = GenerateParams(prompt="a photo of sks dog")
    assert (p.width, p.height, p.num_images, p.model, p.scheduler) == (
        512,
        512,
        1,
        "base",
        SchedulerName.dpmsolver_pp,
    )


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"guidance_scale": 31}, "guidance_scale"),
        ({"guidance_scale": -0.5}, "guidance_scale"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 151}, "num_inference_steps"),
        ({"width": 500}, "width"),
        ({"height": 4096}, "height"),
        ({"num_images": 9}, "num_images"),
        ({"num_images": 0}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"scheduler": "lms"}, "scheduler"),
        ({"model": "../etc"}, "model"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"steps": 10}, "steps"),  # unknown fields are refused, not ignored
    ],
)
def test_bad_params_name_the_field(kw, field):
    assert field in _error_fields(**kw)


def test_multiple_of_8_message():
    with pytest.raises(ValidationError, match="multiple of 8"):
        GenerateParams(prompt="x", width=100)


def test_area_limit(monkeypatch):
    from services.contracts import generate as gen_params

    monkeypatch.setenv("DETBOOTH_GEN_MAX_PIXELS", str(256 * 256))
    gen_params.generation_limits.cache_clear()
    try:
        with pytest.raises(ValidationError, match="exceeds"):
            GenerateParams(prompt="x", width=512, height=256)
        GenerateParams(prompt="x", width=256, height=256)
    finally:
        gen_params.generation_limits.cache_clear()


def test_every_scheduler_name_is_accepted():
    for name in ("ddim", "dpmsolver++", "euler", "euler_a", "pndm"):
        assert GenerateParams(prompt="x", scheduler=name).scheduler.value == name


def test_image_seeds_follow_the_base_seed_and_wrap():
    p = GenerateParams(prompt="x", num_images=3)
    assert p.image_seeds(7) == [7, 8, 9]
    assert p.image_seeds(2**32 - 1) == [2**32 - 1, 0, 1]


def test_gen_params_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, services.contracts.generate; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
