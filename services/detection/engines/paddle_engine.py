"""Paddle Inference engine: CPU (oneDNN), GPU, and TensorRT subgraphs over the batcher's shape buckets (dynamic
shape ranges, serialised engines, INT8 calibrated on the rendered calibration set)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..settings import DetectionSettings
from .base import Engine, Shape, as_prob_maps
from .tensorrt import Profile, default_calibration, engine_key, overflow_cap, pad_to, trt_profiles

INPUT = "x"


def model_paths(folder: Path) -> tuple[Path, Path]:
    params = folder / "inference.pdiparams"
    for program in ("inference.json", "inference.pdmodel"):
        if (folder / program).is_file():
            return folder / program, params
    raise FileNotFoundError(f"{folder} has no inference.json or inference.pdmodel")


Call = tuple[str, tuple, dict]
PRECISIONS = {"fp32": "Float32", "fp16": "Half", "int8": "Int8"}


def trt_cache_dir(program: Path, settings: DetectionSettings, max_batch_size: int, bucket: Shape | None) -> Path:
    tag = f"{bucket[0]}x{bucket[1]}" if bucket is not None else f"dyn{overflow_cap(settings.max_side_limit)}"
    return settings.trt_cache_dir / f"{program.parent.name}_{settings.trt_precision}_b{max_batch_size}_{tag}"


def config_calls(program: Path, settings: DetectionSettings, bucket: Shape | None = None,
                 max_batch_size: int = 1, profile: Profile | None = None) -> list[Call]:
    """The ``paddle.inference.Config`` method calls these settings make, as data (testable without a GPU build).

    With TensorRT, ``profile`` is the engine's shape range (``tensorrt.trt_profiles``: one static engine per padded
    bucket plus a dynamic overflow engine, or one dynamic engine for exact shapes); engines and INT8 calibration
    tables are serialised to a per-engine cache folder, so nothing is rebuilt at run time."""
    calls: list[Call] = [("disable_glog_info", (), {}), ("switch_ir_optim", (True,), {})]
    if program.suffix == ".pdmodel":
        # Paddle 3.3's new IR crashes with oneDNN on .pdmodel programs (ConvertPirAttribute2RuntimeAttribute);
        # the old IR is also the fastest there, and the one the TensorRT subgraph pass runs on.
        # (The memory-optimise pass exists only there: asking for it on a PIR .json program fails.)
        calls += [("enable_new_ir", (False,), {}), ("enable_memory_optim", (), {})]
    if settings.device == "cpu":
        calls += [("disable_gpu", (), {}), ("set_cpu_math_library_num_threads", (settings.threads,), {})]
        # oneDNN kernels under the new IR (which .json programs need) crash on some attributes in Paddle 3.3
        # (ConvertPirAttribute2RuntimeAttribute, e.g. an interpolate's double scales): oneDNN for .pdmodel only.
        if settings.paddle_onednn and program.suffix == ".pdmodel":
            calls += [("enable_mkldnn", (), {}),
                      ("set_mkldnn_cache_capacity", (settings.onednn_cache_capacity,), {})]
        else:
            calls.append(("disable_mkldnn", (), {}))  # Paddle's CPU build turns it on by default
        return calls
    calls.append(("enable_use_gpu", (256, settings.gpu_id), {}))
    if not settings.use_tensorrt:
        return calls
    if profile is None:
        profile = trt_profiles([bucket] if bucket else [], max_batch_size, settings.max_side_limit,
                               padded=bucket is not None)[bucket]
    calls += [
        ("enable_tensorrt_engine", (), {
            "workspace_size": settings.trt_workspace_mb << 20,
            "max_batch_size": max_batch_size,
            "min_subgraph_size": settings.trt_min_subgraph_size,
            "precision_mode": PRECISIONS[settings.trt_precision],
            "use_static": True,
            # INT8: the first predictor runs the calibration images and writes the table into the cache folder
            # (PaddleEngine.load); later ones find it there and build the INT8 engine from it
            "use_calib_mode": settings.trt_precision == "int8",
        }),
        # Paddle's order: min, max, opt
        ("set_trt_dynamic_shape_info", ({INPUT: list(profile.min)}, {INPUT: list(profile.max)},
                                        {INPUT: list(profile.opt)}), {}),
        ("set_optim_cache_dir", (str(trt_cache_dir(program, settings, max_batch_size, bucket)),), {}),
    ]
    return calls


def has_calibration_table(cache: Path) -> bool:
    """Paddle writes TensorRT INT8 calibration tables as ``trt_calib_*`` under the optimisation cache folder."""
    return cache.is_dir() and any(cache.rglob("trt_calib_*"))


def calibration_inputs(settings: DetectionSettings, bucket: Shape | None, profile: Profile,
                       batches: Iterable[np.ndarray] | None = None) -> list[np.ndarray]:
    """The rendered calibration images, preprocessed as served; padded/cropped to a static bucket's shape, or, for
    a dynamic engine, at their own shapes padded up to its smallest (those within its profile)."""
    batches = default_calibration(settings) if batches is None else batches
    if bucket is not None:
        return [pad_to(b, bucket) for b in batches]
    at_least = [pad_to(b, (max(b.shape[2], profile.min[2]), max(b.shape[3], profile.min[3]))) for b in batches]
    return [b for b in at_least if profile.covers(b.shape)]


def build_config(folder: Path, settings: DetectionSettings, bucket: Shape | None = None, max_batch_size: int = 1,
                 profile: Profile | None = None):
    """A real ``paddle.inference.Config`` with ``config_calls`` applied."""
    from paddle import inference

    program, params = model_paths(folder)
    config = inference.Config(str(program), str(params))
    for name, args, kwargs in config_calls(program, settings, bucket, max_batch_size, profile):
        if "precision_mode" in kwargs:
            kwargs = {**kwargs, "precision_mode": getattr(inference.PrecisionType, kwargs["precision_mode"])}
        if name == "set_optim_cache_dir":
            Path(args[0]).mkdir(parents=True, exist_ok=True)
        getattr(config, name)(*args, **kwargs)
    return config


class PaddleEngine(Engine):
    name = "paddle"

    def __init__(self, folder: Path, settings: DetectionSettings) -> None:
        self.folder = folder
        self.settings = settings
        self._masters: dict[Shape | None, object] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def load(self, buckets: Sequence[Shape], max_batch_size: int) -> None:
        from paddle import inference

        s = self.settings
        profiles: dict[Shape | None, Profile | None] = {None: None}
        if s.device == "gpu" and s.use_tensorrt:
            profiles = dict(trt_profiles(buckets, max_batch_size, s.max_side_limit, padded=s.bucket_mode == "padded"))
        program, _ = model_paths(self.folder)
        for key, profile in profiles.items():
            if profile is not None and s.trt_precision == "int8":
                cache = trt_cache_dir(program, s, max_batch_size, key)
                if not has_calibration_table(cache):
                    self._calibrate(build_config(self.folder, s, key, max_batch_size, profile),
                                    calibration_inputs(s, key, profile))
            self._masters[key] = inference.create_predictor(build_config(self.folder, s, key, max_batch_size,
                                                                         profile))
        self.profiles = profiles

    @staticmethod
    def _calibrate(config, inputs: Sequence[np.ndarray]) -> None:
        """Run the calibration images through a calibration-mode predictor; Paddle writes the INT8 table when it
        is destroyed."""
        from paddle import inference

        if not inputs:
            raise RuntimeError("TensorRT INT8 calibration has no images within the engine's shape range")
        predictor = inference.create_predictor(config)
        handle = predictor.get_input_handle(predictor.get_input_names()[0])
        for batch in inputs:
            handle.reshape(list(batch.shape))
            handle.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
            predictor.run()
        del handle, predictor

    def _predictor(self, shape: Shape):
        """This thread's predictor (a ``clone()`` of the master: Paddle predictors are not thread-safe)."""
        key = engine_key(shape, self._masters)
        mine = getattr(self._local, "predictors", None)
        if mine is None:
            mine = self._local.predictors = {}
        if key not in mine:
            with self._lock:
                mine[key] = self._masters[key].clone()
        return mine[key]

    def infer(self, batch: np.ndarray) -> np.ndarray:
        predictor = self._predictor((batch.shape[2], batch.shape[3]))
        handle = predictor.get_input_handle(predictor.get_input_names()[0])
        handle.reshape(list(batch.shape))
        handle.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        predictor.run()
        output = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
        return as_prob_maps(output)

    def describe(self) -> dict[str, object]:
        s = self.settings
        return {"engine": self.name, "device": s.device, "onednn": s.device == "cpu" and s.paddle_onednn,
                "tensorrt": s.use_tensorrt, "threads": s.threads}
