"""DETBOOTH_DETECTION_MODELS / DETBOOTH_DETECTION_MODEL: which models a deployment loads, which one is the default."""

import pytest
from pydantic import ValidationError

from services.detection.settings import DetectionSettings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("MODEL", "MODELS", "MODEL_DIR"):
        monkeypatch.delenv(f"DETBOOTH_DETECTION_{name}", raising=False)


def test_one_model_by_default():
    s = DetectionSettings()
    assert s.model == "PP-OCRv5_server_det" and s.served_models == ["PP-OCRv5_server_det"]


def test_models_from_a_comma_separated_variable(monkeypatch):
    monkeypatch.setenv("DETBOOTH_DETECTION_MODELS", " PP-OCRv5_server_det, PP-OCRv6_small_det ")
    s = DetectionSettings()
    assert s.model == "PP-OCRv5_server_det" and s.served_models == ["PP-OCRv5_server_det", "PP-OCRv6_small_det"]
    monkeypatch.setenv("DETBOOTH_DETECTION_MODEL", "PP-OCRv6_small_det")  # the default, loaded first
    assert DetectionSettings().served_models == ["PP-OCRv6_small_det", "PP-OCRv5_server_det"]
    monkeypatch.setenv("DETBOOTH_DETECTION_MODELS", '["PP-OCRv6_small_det"]')  # JSON works too
    assert DetectionSettings().served_models == ["PP-OCRv6_small_det"]


def test_a_default_outside_the_list_or_a_model_twice_is_refused(monkeypatch):
    monkeypatch.setenv("DETBOOTH_DETECTION_MODELS", "PP-OCRv6_small_det,PP-OCRv5_mobile_det")
    monkeypatch.setenv("DETBOOTH_DETECTION_MODEL", "PP-OCRv5_server_det")
    with pytest.raises(ValidationError, match="is not in DETBOOTH_DETECTION_MODELS"):
        DetectionSettings()
    monkeypatch.delenv("DETBOOTH_DETECTION_MODEL")
    monkeypatch.setenv("DETBOOTH_DETECTION_MODELS", "PP-OCRv6_small_det,PP-OCRv6_small_det")
    with pytest.raises(ValidationError, match="twice"):
        DetectionSettings()


def test_each_model_gets_its_own_settings_and_the_folder_stays_the_defaults(tmp_path):
    s = DetectionSettings(model="A", models=["A", "B"], model_dir=tmp_path)
    a, b = s.for_model("A"), s.for_model("B")
    assert (a.model, a.model_dir, a.models) == ("A", tmp_path, [])
    assert (b.model, b.model_dir) == ("B", None) and b.precision == s.precision and b.limits == s.limits


def test_batches_default_to_one_image_on_cpu_and_eight_on_gpu(monkeypatch):
    from services.detection.settings import DetectionSettings

    assert DetectionSettings(_env_file=None).max_batch_size == 1
    assert DetectionSettings(_env_file=None, device="gpu").max_batch_size == 8
    monkeypatch.setenv("DETBOOTH_DETECTION_DEVICE", "gpu")  # the device from the environment counts too
    assert DetectionSettings(_env_file=None).max_batch_size == 8
    monkeypatch.setenv("DETBOOTH_DETECTION_MAX_BATCH_SIZE", "4")
    assert DetectionSettings(_env_file=None).max_batch_size == 4
