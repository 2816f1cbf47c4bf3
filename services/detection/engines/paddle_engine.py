"""Paddle Inference engine: CPU (oneDNN), GPU, and TensorRT subgraphs with one engine per shape bucket."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..settings import DetectionSettings
from .base import Engine, Shape, as_prob_maps

INPUT = "x"


def model_paths(folder: Path) -> tuple[Path, Path]:
    params = folder / "inference.pdiparams"
    for program in ("inference.json", "inference.pdmodel"):
        if (folder / program).is_file():
            return folder / program, params
    raise FileNotFoundError(f"{folder} has no inference.json or inference.pdmodel")


Call = tuple[str, tuple, dict]
PRECISIONS = {"fp32": "Float32", "fp16": "Half", "int8": "Int8"}


def config_calls(program: Path, settings: DetectionSettings, bucket: Shape | None = None,
                 max_batch_size: int = 1) -> list[Call]:
    """The ``paddle.inference.Config`` method calls these settings make, as data (testable without a GPU build).

    With TensorRT and padded buckets there is one config per bucket: static H x W, dynamic batch
    1..max_batch_size, engines serialised to a per-bucket cache folder, so no engine is rebuilt at run time.
    With exact shapes (bucket None) one engine covers 32..max_side_limit on each side."""
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
    if bucket is not None:  # padded buckets: one static-shape engine per bucket
        h, w = bucket
        shapes = ({INPUT: [1, 3, h, w]}, {INPUT: [max_batch_size, 3, h, w]}, {INPUT: [max_batch_size, 3, h, w]})
        tag = f"{h}x{w}"
    else:  # exact shapes: one engine over every multiple-of-32 shape up to max_side_limit
        top, opt = settings.max_side_limit, max(settings.bucket_sides)
        shapes = ({INPUT: [1, 3, 32, 32]}, {INPUT: [max_batch_size, 3, top, top]},
                  {INPUT: [max_batch_size, 3, opt, opt]})
        tag = f"dyn{top}"
    cache = settings.trt_cache_dir / f"{program.parent.name}_{settings.trt_precision}_b{max_batch_size}_{tag}"
    calls += [
        ("enable_tensorrt_engine", (), {
            "workspace_size": settings.trt_workspace_mb << 20,
            "max_batch_size": max_batch_size,
            "min_subgraph_size": settings.trt_min_subgraph_size,
            "precision_mode": PRECISIONS[settings.trt_precision],
            "use_static": True,
            "use_calib_mode": settings.trt_precision == "int8",
        }),
        ("set_trt_dynamic_shape_info", shapes, {}),
        ("set_optim_cache_dir", (str(cache),), {}),
    ]
    return calls


def build_config(folder: Path, settings: DetectionSettings, bucket: Shape | None = None, max_batch_size: int = 1):
    """A real ``paddle.inference.Config`` with ``config_calls`` applied."""
    from paddle import inference

    program, params = model_paths(folder)
    config = inference.Config(str(program), str(params))
    for name, args, kwargs in config_calls(program, settings, bucket, max_batch_size):
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

        per_bucket = self.settings.use_tensorrt and self.settings.bucket_mode == "padded"
        keys: list[Shape | None] = list(buckets) if per_bucket else [None]
        for key in keys:
            config = build_config(self.folder, self.settings, key, max_batch_size)
            self._masters[key] = inference.create_predictor(config)

    def _predictor(self, shape: Shape):
        """This thread's predictor (a ``clone()`` of the master: Paddle predictors are not thread-safe)."""
        key = shape if shape in self._masters else None
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
