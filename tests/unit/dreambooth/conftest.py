"""Fixtures shared by the DreamBooth worker tests."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sd_data_dir(tmp_path_factory) -> Path:
    """A data folder whose `models/tiny-sd` holds the tiny random pipeline (built once per test session)."""
    from services.dreambooth.base_models import resolve_base_model

    data_dir = tmp_path_factory.mktemp("dreambooth-data")
    resolve_base_model("tiny", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def tiny_sd(tiny_sd_data_dir) -> Path:
    """The tiny random Stable Diffusion pipeline as a diffusers folder (read-only: copy it to change it)."""
    return tiny_sd_data_dir / "models" / "tiny-sd"
