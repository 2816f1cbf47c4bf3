import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.dreambooth.base_models import BaseModelError, resolve_base_model
from services.dreambooth.settings import DreamboothSettings


def test_tiny_is_the_default_and_is_built_once(tiny_sd_data_dir, tiny_sd, caplog):
    stamp = (tiny_sd / "model_index.json").stat().st_mtime_ns
    with caplog.at_level(logging.WARNING):
        for spec in (None, "", "tiny", " TINY "):
            assert resolve_base_model(spec, tiny_sd_data_dir) == tiny_sd
    assert (tiny_sd / "model_index.json").stat().st_mtime_ns == stamp
    assert "TINY RANDOM TEST MODEL" in caplog.text


def test_tiny_concurrent_builders_make_one_model(tmp_path, monkeypatch, tiny_sd):
    calls = []

    def fake_build(out: Path) -> Path:
        calls.append(out)
        shutil.copytree(tiny_sd, out)
        return out

    monkeypatch.setattr("services.dreambooth.tiny_sd.build_tiny_sd", fake_build)
    with ThreadPoolExecutor(4) as ex:
        paths = list(ex.map(lambda _: resolve_base_model("tiny", tmp_path), range(4)))
    assert len(set(paths)) == 1 and len(calls) == 1


def test_diffusers_folder_is_used_as_is(tiny_sd, tmp_path):
    assert resolve_base_model(str(tiny_sd), tmp_path) == tiny_sd


def test_folder_without_model_index_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="model_index.json"):
        resolve_base_model(str(tmp_path / "empty"), tmp_path)


def test_unknown_spec_is_refused(tmp_path):
    with pytest.raises(BaseModelError, match="neither"):
        resolve_base_model("not a model", tmp_path)


def test_hub_id_offline_uses_an_earlier_download(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError, match="HF_HUB_OFFLINE"):
        resolve_base_model("some-org/some-model", tmp_path)
    shutil.copytree(tiny_sd, tmp_path / "models" / "hub" / "some-org--some-model")
    assert resolve_base_model("some-org/some-model", tmp_path) == tmp_path / "models/hub/some-org--some-model"


def test_hub_id_online_downloads_only_pipeline_weights(tiny_sd, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = []

    def fake_snapshot_download(repo_id, *, local_dir, allow_patterns, ignore_patterns, **_):
        seen.append((repo_id, allow_patterns, ignore_patterns))
        shutil.copytree(tiny_sd, local_dir, dirs_exist_ok=True)
        return str(local_dir)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    out = resolve_base_model("some-org/some-model", tmp_path)
    assert out == tmp_path / "models/hub/some-org--some-model" and (out / "model_index.json").is_file()
    repo_id, allow, ignore = seen[0]
    assert repo_id == "some-org/some-model" and "*.ckpt" in ignore and "safety_checker/*" in ignore
    assert len(seen) == 1  # the tiny folder has safetensors weights: no .bin fallback


def test_single_file_offline_without_config_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"x")
    with pytest.raises(BaseModelError, match="DETBOOTH_SD_SINGLE_FILE_CONFIG"):
        resolve_base_model(str(ckpt), tmp_path)


def test_single_file_is_converted_once_with_the_local_config(tiny_sd, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def fake_from_single_file(path, **kw):
        calls.append((path, kw))
        return StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)

    monkeypatch.setattr(StableDiffusionPipeline, "from_single_file", staticmethod(fake_from_single_file))
    ckpt = tmp_path / "my-model.safetensors"
    ckpt.write_bytes(b"weights")
    out = resolve_base_model(str(ckpt), tmp_path, single_file_config=str(tiny_sd))
    assert out.parent == tmp_path / "models/converted" and (out / "unet").is_dir()
    assert resolve_base_model(str(ckpt), tmp_path, single_file_config=str(tiny_sd)) == out
    assert len(calls) == 1
    assert calls[0][1]["config"] == str(tiny_sd) and calls[0][1]["local_files_only"] is True


def test_settings_read_the_base_model_from_the_environment(monkeypatch):
    monkeypatch.setenv("DETBOOTH_SD_BASE_MODEL", "/models/sd15")
    assert DreamboothSettings().sd_base_model == "/models/sd15"
    monkeypatch.delenv("DETBOOTH_SD_BASE_MODEL")
    assert DreamboothSettings().sd_base_model == "tiny"


# a real single-file checkpoint: the tiny pipeline written in the original (LDM) key layout ---------------


def _unet_to_ldm(sd: dict, config: dict) -> dict:
    """diffusers UNet keys -> CompVis `model.diffusion_model.*` keys (SD 1.x layout)."""
    lpb, n = config["layers_per_block"], len(config["block_out_channels"])
    names = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    for i in range(n):
        for j in range(lpb):
            names[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{i * (lpb + 1) + j + 1}.0"
            names[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{i * (lpb + 1) + j + 1}.1"
        names[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(i + 1) * (lpb + 1)}.0.op"
        has_attn = "CrossAttn" in config["up_block_types"][i]
        for j in range(lpb + 1):
            names[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{i * (lpb + 1) + j}.0"
            names[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{i * (lpb + 1) + j}.1"
        names[f"up_blocks.{i}.upsamplers.0"] = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}"
    resnet = {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "time_emb_proj": "emb_layers.1",
        "conv_shortcut": "skip_connection",
    }
    out = {}
    for key, value in sd.items():
        prefix = max((p for p in names if key.startswith(p + ".")), key=len)
        rest = key[len(prefix) + 1 :]
        if ".resnets." in prefix:
            head, _, tail = rest.partition(".")
            rest = f"{resnet[head]}.{tail}"
        out[f"model.diffusion_model.{names[prefix]}.{rest}"] = value
    return out


def _vae_to_ldm(sd: dict, config: dict) -> dict:
    n = len(config["block_out_channels"])
    names = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
    for side, ldm_side in (("encoder", "encoder"), ("decoder", "decoder")):
        names[f"{side}.mid_block.resnets.0"] = f"{ldm_side}.mid.block_1"
        names[f"{side}.mid_block.resnets.1"] = f"{ldm_side}.mid.block_2"
        names[f"{side}.mid_block.attentions.0"] = f"{ldm_side}.mid.attn_1"
    for i in range(n):
        for j in range(config["layers_per_block"] + 1):
            names[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
            names[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        names[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        names[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    inner = {
        "conv_shortcut": "nin_shortcut",
        "group_norm": "norm",
        "to_q": "q",
        "to_k": "k",
        "to_v": "v",
        "to_out.0": "proj_out",
    }
    out = {}
    for key, value in sd.items():
        prefix = max((p for p in names if key.startswith(p + ".")), key=len, default=None)
        if prefix is None:  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
            out[f"first_stage_model.{key}"] = value
            continue
        rest = key[len(prefix) + 1 :]
        head, _, tail = rest.rpartition(".")
        if "attentions" in prefix:
            value = value[:, :, None, None] if value.ndim == 2 else value  # linear -> 1x1 conv
        head = f".{inner.get(head, head)}" if head else ""
        out[f"first_stage_model.{names[prefix]}{head}.{tail}"] = value
    return out


def to_ldm_checkpoint(folder: Path, out: Path) -> Path:
    """Write a diffusers SD folder as one original-layout .safetensors file (what from_single_file reads)."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    def weights(sub):
        return load_file(next((folder / sub).glob("*.safetensors")))

    ckpt = _unet_to_ldm(weights("unet"), json.loads((folder / "unet/config.json").read_text()))
    ckpt |= _vae_to_ldm(weights("vae"), json.loads((folder / "vae/config.json").read_text()))
    for key, value in weights("text_encoder").items():
        ckpt[f"cond_stage_model.transformer.text_model.{key.removeprefix('text_model.')}"] = value
    n_positions = ckpt["cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"].shape[
        0
    ]
    ckpt["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(n_positions)[None]
    save_file({k: v.contiguous() for k, v in ckpt.items()}, out)
    return out


def test_single_file_checkpoint_converts_offline_to_the_same_pipeline(tiny_sd, tmp_path, monkeypatch):
    import torch
    from diffusers import StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = to_ldm_checkpoint(tiny_sd, tmp_path / "tiny-sd.safetensors")
    out = resolve_base_model(str(ckpt), tmp_path / "data", single_file_config=str(tiny_sd))
    converted = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    original = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(converted, name).state_dict(), getattr(original, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k].reshape(a[k].shape)) for k in a), name
