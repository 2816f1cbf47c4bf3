import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from services.dreambooth import base_models
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
