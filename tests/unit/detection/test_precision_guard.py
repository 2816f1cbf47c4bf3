"""The precision guard over real engines (PP-OCRv5 mobile det on ONNX Runtime as fp32) and small wrappers that
stand for reduced-precision engines: one whose output keeps only fp16 resolution, one shifted and noisy."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.detection.engines.base import Engine
from services.detection.engines.onnx_engine import OnnxEngine
from services.detection.postprocess import DBPostProcessor, PostprocessConfig
from services.detection.precision_guard import (Candidate, GuardLimits, Selection, ValidationRun, Validator, judge,
                                                select_precision)
from services.detection.preprocess import NormalizeConfig, ResizeConfig
from services.detection.settings import DetectionSettings
from services.detection.textset import validation_set
from tests.detection_support import V5_MOBILE_ONNX

SETTINGS = DetectionSettings(_env_file=None, cpu_threads=1)
LIMITS = GuardLimits()


class Wrapped(Engine):
    """A stand-in reduced engine: the fp32 engine's maps, rounded to fp16 or shifted and noised."""

    def __init__(self, inner: Engine, name: str, shift_px: int = 0, noise: float = 0.0, fp16: bool = False,
                 delay_s: float = 0.0) -> None:
        self.inner, self.name, self.shift_px, self.noise, self.fp16 = inner, name, shift_px, noise, fp16
        self.delay_s = delay_s
        self.closed = False

    def load(self, buckets, max_batch_size) -> None:
        pass

    def infer(self, batch: np.ndarray) -> np.ndarray:
        maps = self.inner.infer(batch)
        time.sleep(self.delay_s)
        if self.fp16:
            maps = maps.astype(np.float16).astype(np.float32)
        if self.shift_px:
            maps = np.roll(maps, (self.shift_px, self.shift_px), axis=(1, 2))
        if self.noise:
            maps = np.clip(maps + np.random.default_rng(0).normal(0, self.noise, maps.shape), 0, 1)
        return maps.astype(np.float32)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def inner() -> Engine:
    """The fp32 engine the wrappers reduce (never handed to the guard, so never closed by it)."""
    engine = OnnxEngine(V5_MOBILE_ONNX, SETTINGS)
    engine.load([], 1)
    return engine


@pytest.fixture
def reference() -> Engine:
    """The fp32 reference of one test: the guard closes it when a reduced engine wins."""
    engine = OnnxEngine(V5_MOBILE_ONNX, SETTINGS)
    engine.load([], 1)
    return engine


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(validation_set(6, max_side=640), ResizeConfig(960, "max"), NormalizeConfig(),
                     DBPostProcessor(PostprocessConfig()), timing_images=2)


def candidate(engine: Engine, precision: str) -> Candidate:
    return Candidate(precision, engine.name, lambda: (engine, {"note": "fixture"}))


def test_judge_applies_both_rules():
    box = np.array([[0, 0], [100, 0], [100, 20], [0, 20]], dtype=np.float32)
    far = box + 60
    ref = ValidationRun([[box, box + 200]] * 50, hmean=0.90, images_per_s=1.0)
    same = ValidationRun(ref.boxes, hmean=0.896, images_per_s=2.0)
    assert judge(ref, same, LIMITS)[:2] == (True, 1.0)
    worse = ValidationRun(ref.boxes, hmean=0.894, images_per_s=2.0)
    ok, _, why = judge(ref, worse, LIMITS)
    assert not ok and "hmean 0.8940 < fp32's 0.9000" in why
    two_lost = ValidationRun([[box, box + 200]] * 48 + [[box, far]] * 2, hmean=0.9, images_per_s=2.0)
    assert judge(ref, two_lost, LIMITS)[:2] == (True, pytest.approx(0.98))  # exactly at the bound
    three_lost = ValidationRun([[box, box + 200]] * 47 + [[box, far]] * 3, hmean=0.9, images_per_s=2.0)
    ok, match, why = judge(ref, three_lost, LIMITS)
    assert not ok and match == pytest.approx(0.97) and "matched 97.0% of fp32's boxes < 98%" in why


def test_accepts_a_good_reduced_engine(inner, reference, validator):
    good = Wrapped(inner, "fp16-output", fp16=True)
    ref_run, run = validator.run(reference), validator.run(good)
    assert ref_run.hmean > 0.8 and sum(map(len, ref_run.boxes)) > 20  # the fp32 engine finds the lines
    accepted, match, why = judge(ref_run, run, LIMITS)
    assert accepted and match >= 0.98 and why.startswith("passed")


def test_rejects_a_perturbed_engine_falls_back_and_says_why(inner, reference, validator):
    bad = Wrapped(inner, "shifted", shift_px=6, noise=0.05)
    good = Wrapped(inner, "fp16-output", fp16=True)
    chosen = select_precision("int8", reference, "onnxruntime-fp32",
                              [candidate(bad, "int8"), candidate(good, "bf16")], lambda: validator, LIMITS)
    assert isinstance(chosen, Selection)
    assert chosen.precision == "bf16" and chosen.engine is good and bad.closed and not good.closed
    fp32, int8, bf16 = chosen.trials
    assert (fp32.precision, int8.precision, bf16.precision) == ("fp32", "int8", "bf16")
    assert not int8.accepted and int8.reason.startswith("rejected") and int8.match_rate < 0.98
    assert bf16.accepted and bf16.hmean >= fp32.hmean - 0.005
    assert all(t.images_per_s and t.images_per_s > 0 for t in chosen.trials)
    assert "instead of the requested int8" in chosen.reason and "shifted int8 rejected" in chosen.reason


def test_only_fp32_passes_then_fp32_serves(inner, reference, validator):
    bad = Wrapped(inner, "shifted", shift_px=6, noise=0.05)
    chosen = select_precision("bf16", reference, "onnxruntime-fp32", [candidate(bad, "bf16")], lambda: validator,
                              LIMITS)
    assert chosen.precision == "fp32" and chosen.engine is reference and bad.closed
    assert [t.accepted for t in chosen.trials] == [True, False]


def test_auto_serves_the_fastest_that_passed(inner, reference, validator):
    good = Wrapped(inner, "fp16-output", fp16=True)
    bad = Wrapped(inner, "shifted", shift_px=6, noise=0.05)
    chosen = select_precision("auto", reference, "onnxruntime-fp32",
                              [candidate(bad, "int8"), candidate(good, "bf16")], lambda: validator, LIMITS)
    passed = {t.precision: t.images_per_s for t in chosen.trials if t.accepted}
    assert set(passed) == {"fp32", "bf16"}
    assert chosen.precision == max(passed, key=passed.get)


def never_built():
    raise AssertionError("a candidate that cannot pay off was built")


def test_auto_skips_a_bounded_build_that_cannot_pay_off(inner, reference, validator):
    # plain int8 fails the guard and runs slower than fp32: its accuracy-controlled build cannot be faster
    slow_bad = Wrapped(inner, "plain-int8", shift_px=6, noise=0.05, delay_s=0.05)
    chosen = select_precision("auto", reference, "onnxruntime-fp32",
                              [Candidate("int8", "controlled", never_built, bounded_by="plain-int8"),
                               candidate(slow_bad, "int8")], lambda: validator, LIMITS)
    assert chosen.precision == "fp32"
    assert [t.engine for t in chosen.trials] == ["onnxruntime-fp32", "plain-int8", "controlled"]  # bounded last
    assert not chosen.trials[2].accepted and "runs no faster than plain-int8" in chosen.trials[2].reason


def test_auto_skips_a_bounded_build_when_its_bound_passed(inner, validator):
    reference = OnnxEngine(V5_MOBILE_ONNX, SETTINGS)
    reference.load([], 1)
    good = Wrapped(inner, "plain-int8", fp16=True)
    chosen = select_precision("auto", reference, "onnxruntime-fp32",
                              [Candidate("int8", "controlled", never_built, bounded_by="plain-int8"),
                               candidate(good, "int8")], lambda: validator, LIMITS)
    assert "plain-int8, at least as fast, passed" in chosen.trials[-1].reason


def test_a_bounded_build_runs_when_its_bound_failed_but_was_faster(inner, reference, validator):
    plain = Wrapped(inner, "plain-int8", shift_px=6, noise=0.05)  # as fast as fp32, so maybe faster
    controlled = Wrapped(inner, "controlled", fp16=True)
    trials = select_precision("int8", reference, "onnxruntime-fp32",  # a requested precision: never skipped
                              [candidate(plain, "int8"), Candidate("int8", "controlled",
                                                                     lambda: (controlled, {}), "plain-int8")],
                              lambda: validator, LIMITS).trials
    assert [(t.engine, t.accepted) for t in trials] == [("onnxruntime-fp32", True), ("plain-int8", False),
                                                        ("controlled", True)]


def test_a_failed_build_is_reported_and_never_fatal(reference, validator):
    def broken():
        raise RuntimeError("calibration exploded")

    chosen = select_precision("int8", reference, "onnxruntime-fp32", [Candidate("int8", "nncf", broken)],
                              lambda: validator, LIMITS)
    assert chosen.precision == "fp32" and chosen.engine is reference
    assert chosen.trials[1].reason == "failed: RuntimeError: calibration exploded"


def test_no_validation_set_means_fp32(inner, reference):
    def no_fonts():
        raise FileNotFoundError("fonts missing")

    good = Wrapped(inner, "fp16-output", fp16=True)
    chosen = select_precision("auto", reference, "onnxruntime-fp32", [candidate(good, "int8")], no_fonts, LIMITS)
    assert chosen.precision == "fp32" and "guard could not run (FileNotFoundError: fonts missing)" in chosen.reason


def test_fp32_is_exact_and_unguarded(reference):
    def never():
        raise AssertionError("fp32 must not run the guard")

    chosen = select_precision("fp32", reference, "onnxruntime-fp32", [], never, LIMITS)
    assert chosen.engine is reference and chosen.precision == "fp32" and len(chosen.trials) == 1


@pytest.mark.gpu
def test_torch_fp16_on_cuda_goes_through_the_guard(tmp_path):
    """The service's GPU path: gpu_candidates offers torch fp16, the same guard judges it against torch fp32."""
    import torch

    from services.detection.engine_selection import fp32_settings, gpu_candidates
    from services.detection.engines.torch_engine import TorchEngine
    from services.detection.models import ResolvedModel

    s = DetectionSettings(_env_file=None, device="gpu", engine="torch", torch_random_weights=True)
    reference = TorchEngine("ch_PP-OCRv5_det_mobile", None, fp32_settings(s))
    reference.load([], 1)
    weights = tmp_path / "same.pth"
    torch.save(reference.model.state_dict(), weights)  # fp16 must run the same (random) weights
    model = ResolvedModel("PP-OCRv5_mobile_det", "PP-OCRv5_mobile_det", weights, "torch", "configured")
    (fp16,) = gpu_candidates(model, s, [])
    assert (fp16.precision, fp16.label) == ("fp16", "torch-fp16")
    validator = Validator(validation_set(4, max_side=640), ResizeConfig(960, "max"), NormalizeConfig(),
                          DBPostProcessor(PostprocessConfig()), timing_images=2)
    chosen = select_precision("fp16", reference, "torch-fp32", [fp16], lambda: validator, LIMITS)
    trial = chosen.trials[1]
    assert trial.precision == "fp16" and trial.match_rate is not None and trial.images_per_s > 0
    assert chosen.precision == ("fp16" if trial.accepted else "fp32")
    assert str(chosen.engine.describe().get("fp16")) == str(trial.accepted)
