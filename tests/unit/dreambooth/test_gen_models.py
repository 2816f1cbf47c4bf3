"""Fine-tuned models (full and LoRA) load and change the output; the model cache keeps to its budget."""

import numpy as np
import pytest
import torch

from services.dreambooth.model_loading import load_lora_model, load_pipeline_folder
from services.dreambooth.pipeline_cache import LoadedModel, PipelineCache
from services.dreambooth.sampling import sample

PROMPT = "a photo of sks dog"
CPU = torch.device("cpu")


def _image(model, seed=1):
    im = sample(
        model,
        [PROMPT],
        [""],
        [seed],
        guidance_scale=7.5,
        num_inference_steps=2,
        width=64,
        height=64,
        scheduler="ddim",
    )[0]
    return np.asarray(im).astype(int)


def test_full_finetune_differs_from_base(tiny_loaded, full_finetune_dir):
    tuned = load_pipeline_folder("ft", full_finetune_dir, CPU, torch.float32)
    assert np.abs(_image(tuned) - _image(tiny_loaded)).mean() > 1


def test_lora_loads_and_changes_the_output_without_touching_the_base(tiny_sd, tiny_loaded, lora_file):
    before = _image(tiny_loaded)
    tuned = load_lora_model("lora-ft", tiny_sd, lora_file, CPU, torch.float32)
    assert not any("lora" in n for n, _ in tuned.unet.named_modules())  # fused, adapter layers gone
    assert np.abs(_image(tuned) - before).mean() > 1
    assert np.array_equal(_image(tiny_loaded), before)
    folder_form = load_lora_model("lora-ft", tiny_sd, lora_file.parent, CPU, torch.float32)
    assert np.array_equal(_image(folder_form), _image(tuned))


def _fake(name: str, nbytes: int) -> LoadedModel:
    m = LoadedModel.__new__(LoadedModel)
    m.name, m.nbytes = name, nbytes
    return m


def test_cache_evicts_least_recently_used_within_budget():
    cache = PipelineCache(budget_bytes=100)
    loads = []

    def loader(name, size):
        return lambda: loads.append(name) or _fake(name, size)

    cache.get("a", loader("a", 40))
    cache.get("b", loader("b", 40))
    cache.get("a", loader("a", 40))  # hit: a becomes most recent
    cache.get("c", loader("c", 40))  # evicts b
    assert cache.keys() == ["a", "c"] and loads == ["a", "b", "c"]
    assert cache.used_bytes <= 100
    cache.get("d", loader("d", 90), estimate_bytes=90)  # room made before loading
    assert cache.keys() == ["d"]


def test_a_model_above_the_budget_is_kept_alone():
    cache = PipelineCache(budget_bytes=10)
    cache.get("a", lambda: _fake("a", 5))
    cache.get("big", lambda: _fake("big", 50))
    assert cache.keys() == ["big"]


def test_loaded_model_reports_its_size(tiny_loaded):
    assert tiny_loaded.nbytes > 1_000_000 and tiny_loaded.random_weights
    assert tiny_loaded.dtype == torch.float32 and tiny_loaded.device.type == "cpu"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dtype_choice(dtype):
    from services.dreambooth.model_loading import pick_dtype

    assert pick_dtype(dtype, CPU) == getattr(torch, dtype)
    assert pick_dtype("auto", CPU) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
