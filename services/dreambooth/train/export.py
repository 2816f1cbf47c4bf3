"""Export a trained DreamBoothModule: `full` -> a diffusers pipeline folder, `lora` -> one safetensors file
that diffusers' `load_lora_weights` loads (with the adapter metadata, so alpha != rank reloads right)."""

import shutil
from pathlib import Path

from services.dreambooth.train.module import DreamBoothModule

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_MARKER = "DETBOOTH_RANDOM_TEST_MODEL"


def export_model(module: DreamBoothModule, out_dir: Path) -> Path:
    """Write the trained model under `out_dir`; returns the folder (full) or the safetensors file (lora)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if module.config.method == "lora":
        return export_lora(module, out_dir)
    return export_full(module, out_dir)


def export_lora(module: DreamBoothModule, out_dir: Path) -> Path:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(module.unet))
    kwargs = {"unet_lora_adapter_metadata": module.unet.peft_config["default"].to_dict()}
    if module.config.train_text_encoder:
        te_layers = {k.replace(".default", ""): v for k, v in module.text_encoder.state_dict().items()
                     if "lora_" in k}
        kwargs["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(te_layers)
        kwargs["text_encoder_lora_adapter_metadata"] = module.text_encoder_lora_config.to_dict()
    StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=unet_layers, weight_name=LORA_WEIGHT_NAME,
                                              **kwargs)
    return out_dir / LORA_WEIGHT_NAME


def export_full(module: DreamBoothModule, out_dir: Path) -> Path:
    """The base pipeline with the trained UNet (and text encoder); the VAE, tokenizer and scheduler are the
    base model's files, untouched."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        module.base_model, unet=module.unet, text_encoder=module.text_encoder, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    if pipe.scheduler.config.get("prediction_type") != module.prediction_type:  # trained with an override
        pipe.scheduler.register_to_config(prediction_type=module.prediction_type)
    pipe.save_pretrained(out_dir)
    if (module.base_model / _MARKER).exists():  # still a random test model: keep saying so
        shutil.copy2(module.base_model / _MARKER, out_dir / _MARKER)
    return out_dir
