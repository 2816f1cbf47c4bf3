"""FinetuneConfig: defaults, validation messages that name the field, YAML round trip, no torch import."""

import subprocess
import sys

import pytest

from services.contracts.finetune import ConfigError, FinetuneConfig

MINIMAL = {"instance_prompt": "a photo of sks dog", "class_prompt": "a photo of a dog"}


def test_defaults_follow_diffusers_and_resolve():
    cfg = FinetuneConfig.parse(MINIMAL)
    assert (cfg.method, cfg.resolution, cfg.max_train_steps, cfg.num_class_images) == ("lora", 512, 400, 100)
    assert cfg.with_prior_preservation and cfg.prior_loss_weight == 1.0
    resolved = cfg.resolved(seed=11)
    assert resolved.learning_rate == 1e-4 and resolved.text_encoder_learning_rate == 1e-4 and resolved.seed == 11
    full = FinetuneConfig.parse({**MINIMAL, "method": "full", "seed": 3}).resolved(seed=11)
    assert full.learning_rate == 5e-6 and full.seed == 3
    assert FinetuneConfig.parse({**MINIMAL, "learning_rate": 2e-4, "text_encoder_learning_rate": 1e-5}) \
        .resolved(seed=0).text_encoder_learning_rate == 1e-5


def test_yaml_round_trip():
    cfg = FinetuneConfig.parse({**MINIMAL, "method": "lora", "lora": {"rank": 8, "alpha": 16},
                                "validation_prompts": ["sks dog on a beach"], "snr_gamma": 5.0}).resolved(seed=5)
    text = cfg.to_yaml()
    assert "instance_prompt: a photo of sks dog" in text
    assert FinetuneConfig.from_yaml(text) == cfg


@pytest.mark.parametrize("patch, field", [
    ({"resolution": 500}, "resolution"),
    ({"resolution": 32}, "resolution"),
    ({"method": "dora"}, "method"),
    ({"max_train_steps": 0}, "max_train_steps"),
    ({"learning_rate": -1}, "learning_rate"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"lora": {"rank": 0}}, "lora.rank"),
    ({"lora": {"rnk": 4}}, "lora.rnk"),
    ({"instance_prompt": "   "}, "instance_prompt"),
    ({"learnign_rate": 1e-4}, "learnign_rate"),
    ({"keep_last_checkpoints": 0}, "keep_last_checkpoints"),
    ({"class_prompt": None}, "class_prompt"),
    ({"lr_scheduler": "cosine", "lr_warmup_steps": 400}, "lr_warmup_steps"),
])
def test_invalid_values_are_refused_naming_the_field(patch, field):
    with pytest.raises(ConfigError) as err:
        FinetuneConfig.parse({**MINIMAL, **patch})
    assert field in str(err.value)
    assert err.value.errors


def test_prior_preservation_can_be_turned_off_without_class_prompt():
    cfg = FinetuneConfig.parse({"instance_prompt": "a photo of sks dog", "with_prior_preservation": False})
    assert cfg.class_prompt is None


def test_bad_yaml_is_a_config_error():
    with pytest.raises(ConfigError):
        FinetuneConfig.from_yaml("- just\n- a list\n")


def test_config_module_does_not_import_torch():
    code = "import sys, services.contracts.finetune; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
