"""The detection service's one settings class (environment prefix ``DETBOOTH_DETECTION_``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.contracts.limits import UploadLimits

PADDLEX_MODEL_URL = (
    "https://paddle-model-ecology.bj.bcebos.com/paddlex/official_inference_model/paddle3.0.0/{name}_infer.tar"
)


class DetectionSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DETBOOTH_DETECTION_", protected_namespaces=())

    # --- serving
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)

    # --- model resolution: configured folder -> PaddleX cache -> download -> PyPI-shipped fallback
    model: str = "PP-OCRv5_server_det"  # the default: what a request that names no model gets
    # every model this deployment loads, e.g. "PP-OCRv5_server_det,PP-OCRv6_small_det" (each with its own engine,
    # precision decision, batcher and queue bound); empty: only `model`. Unset `model` then defaults to the first.
    models: Annotated[list[str], NoDecode] = []
    model_dir: Path | None = None  # the default model's PaddleX folder, or an .onnx file / folder holding one
    paddlex_cache_dir: Path = Path.home() / ".paddlex" / "official_models"
    allow_download: bool = True
    download_url: str = PADDLEX_MODEL_URL  # "{name}" is replaced; file:// URLs work too
    download_timeout_s: float = Field(15.0, gt=0)
    allow_fallback: bool = True

    # --- engine
    engine: Literal["auto", "paddle", "onnxruntime", "openvino", "torch"] = "auto"  # the fp32 engine
    device: Literal["cpu", "gpu"] = "cpu"
    gpu_id: int = Field(0, ge=0)
    cpu_threads: int = Field(0, ge=0)  # 0: every core
    # engine threads (one Paddle predictor each). On CPU one: the engine's own threads use every core, and each
    # extra worker holds one more batch of activations. On GPU two: one batch's copies overlap another's compute.
    engine_workers: int = Field(1, ge=1, le=16)
    paddle_onednn: bool = True
    onednn_cache_capacity: int = Field(256, ge=1)  # input shapes whose oneDNN primitives stay cached
    # OpenVINO CPU_RUNTIME_CACHE_CAPACITY: compiled primitive executors kept across input shapes (an LRU, ~30 per
    # image shape, ~0.19 MB each). It trades memory for speed: a shape that misses is recompiled, which doubled
    # bf16's CPU per image, and an LRU smaller than the shapes in rotation misses on every call. 60 keeps the
    # 600 MB bound under traffic of any shapes; 1200 holds ~40 shapes (detect_bench's 26: 2.0x RapidOCR instead
    # of 1.35x) but peaked at 673 MB over 64 shapes. Measured in services/detection/README.md.
    openvino_cache_capacity: int = Field(60, ge=0)
    # OpenVINO CPU streams (each with threads / streams threads, one engine worker each). 1: one stream on every
    # thread. 2 served /detect 1.3x faster at capacity 60 on 2 cores (26.5 vs 20.0 images/s, concurrency 8), but
    # peaked at 643 MB in bench/detect_bench.py, over the 600 MB bound (services/detection/README.md)
    openvino_streams: int = Field(1, ge=1, le=16)
    # under steady load the heap is trimmed at most this often (0: only once idle): a busy process otherwise keeps
    # freed activation and image buffers. Each trim makes the next batches fault their pages back in: every 0.5 s
    # cost 15 % of /detect's images/s (measured while each trim also forked ldconfig, since fixed; README),
    # every 5 s nothing measurable
    heap_trim_every_s: float = Field(5.0, ge=0)
    ort_spin: bool = False  # let onnxruntime's idle threads spin (faster alone, slower beside the CPU pool)
    use_tensorrt: bool = False
    trt_precision: Literal["fp32", "fp16", "int8"] = "fp16"
    trt_cache_dir: Path = Path.home() / ".cache" / "detbooth" / "trt"
    trt_min_subgraph_size: int = Field(15, ge=1)
    trt_workspace_mb: int = Field(1024, ge=64)
    torch_fp16: bool = True
    torch_channels_last: bool = True
    torch_random_weights: bool = False  # benchmarking an architecture without its weights

    # --- precision: reduced precisions serve only after the precision guard compared them with fp32
    # auto: the fastest precision that passes the guard; fp32: exact (no guard, boxes as PaddleOCR's);
    # bf16 / fp16 / int8: that one if it passes, else the next down the chain int8 -> fp16 -> bf16 -> fp32
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    # int8 builds to try (CPU); nncf_ac: NNCF with accuracy control (reverts the costly layers to float)
    # plain NNCF first (seconds): the accuracy-controlled build (minutes, once, cached) only when plain int8 failed
    # the guard and ran faster than everything that passed (bf16 usually wins where the CPU has it)
    int8_methods: list[Literal["nncf_ac", "nncf", "ort_qdq"]] = ["nncf", "nncf_ac", "ort_qdq"]
    calibration_images: int = Field(32, ge=1, le=512)  # rendered calibration images for int8 quantization
    guard_images: int = Field(32, ge=1, le=512)  # rendered validation images the guard runs
    guard_real_images: bool = True  # also scikit-image's page() and text() photographs
    guard_max_hmean_drop: float = Field(0.005, ge=0, le=1)
    guard_min_match_rate: float = Field(0.98, ge=0, le=1)  # share of fp32's boxes matched at IoU >= 0.5
    textset_max_side: int = Field(960, ge=128, le=4096)  # largest side of rendered calibration/validation images
    data_dir: Path = Field(Path("./data"), validation_alias=AliasChoices("DETBOOTH_DETECTION_DATA_DIR",
                                                                         "DETBOOTH_DATA_DIR", "data_dir"))
    quantized_cache_dir: Path | None = None  # default: <data_dir>/detection/quantized
    guard_cache: bool = True  # reuse the guard's verdict (<data_dir>/detection/guard) while its key is unchanged

    # --- batching
    # GPU: up to 8 images a call. CPU: 1. Batching ran no faster per image on CPU (0.77-1.19x vs off), and each
    # batch size is one more shape for the engines' per-shape caches and a bigger activation peak (load test with
    # int8 beside a CPU hog: 459 MB peak with batches of up to 8, 394 MB with 1)
    max_batch_size: int = Field(default_factory=lambda data: 8 if data.get("device") == "gpu" else 1, ge=1, le=256)
    pow2_batches: bool = True  # batch sizes 1, 2, 4, 8, ...: fewer shapes for engines to compile and cache
    max_queue_delay_ms: float = Field(4.0, ge=0, le=1000)
    # a batch's images x H x W at most this (0: no cap): bounds the engine's peak memory on CPU, where batches
    # bigger than ~1 Mpx also run no faster per image (caches). A single larger image still runs alone.
    max_batch_pixels: int = Field(1 << 20, ge=0)
    max_queue_images: int = Field(256, ge=1)
    # exact: a batch holds images of one resized shape, unpadded, so every box equals PaddleOCR's (PP-OCR nets
    # have squeeze-excitation / global pooling, so padding changes the whole probability map, not just its edge).
    # padded: shapes round up to the bucket_sides grid (fewer shapes, fuller batches; suits TensorRT engines).
    # Warm-up before /readyz: padded, every bucket_sides x bucket_sides shape; exact, the smallest one only
    # (requests bring their own shapes; bucket shapes would only fill the per-shape caches and hold memory).
    bucket_mode: Literal["exact", "padded"] = "exact"
    bucket_sides: list[int] = [320, 480, 640, 800, 960]
    warmup: bool = True
    request_timeout_s: float = Field(60.0, gt=0)
    retry_after_s: int = Field(1, ge=1)
    cpu_pool_workers: int = Field(0, ge=0)  # decode/resize/post-process threads; 0: one per core

    # --- input: files, bytes, pixels and pages per request come from the variables the gateway reads too
    limits: UploadLimits = Field(default_factory=UploadLimits)

    # --- pre/post-processing defaults (a model's inference.yml overrides the ones it names)
    limit_side_len: int | None = Field(None, ge=32)
    limit_type: Literal["min", "max", "resize_long"] | None = None
    max_side_limit: int = Field(4000, ge=32)
    thresh: float | None = Field(None, ge=0, le=1)
    box_thresh: float | None = Field(None, ge=0, le=1)
    unclip_ratio: float | None = Field(None, gt=0)
    max_candidates: int | None = Field(None, ge=1)
    use_dilation: bool | None = None
    score_mode: Literal["fast", "slow"] | None = None
    box_type: Literal["quad", "poly"] | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)  # a JSON list
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> DetectionSettings:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"DETBOOTH_DETECTION_MODELS names a model twice: {','.join(self.models)}")
        if self.models and "model" not in self.model_fields_set:
            self.model = self.models[0]
        elif self.models and self.model not in self.models:
            raise ValueError(f"DETBOOTH_DETECTION_MODEL={self.model} is not in DETBOOTH_DETECTION_MODELS="
                             f"{','.join(self.models)}: add it there, or leave DETBOOTH_DETECTION_MODEL unset to "
                             "make the first one the default")
        bad = [s for s in self.bucket_sides if s < 32 or s % 32]
        if not self.bucket_sides or bad:
            raise ValueError(f"bucket_sides must be positive multiples of 32, got {self.bucket_sides}")
        if self.max_side_limit % 32:
            raise ValueError("max_side_limit must be a multiple of 32 (PaddleOCR rounds sides to 32)")
        if self.use_tensorrt and self.device != "gpu":
            raise ValueError("use_tensorrt needs DETBOOTH_DETECTION_DEVICE=gpu")
        if self.max_queue_images < self.max_batch_size:
            raise ValueError("max_queue_images must be at least max_batch_size")
        return self

    @property
    def quantized_cache(self) -> Path:
        return self.quantized_cache_dir or self.data_dir / "detection" / "quantized"

    @property
    def guard_cache_dir(self) -> Path:
        return self.quantized_cache.parent / "guard"

    @property
    def served_models(self) -> list[str]:
        """The models to load, the default first."""
        return [self.model, *(m for m in self.models if m != self.model)]

    def for_model(self, name: str) -> DetectionSettings:
        """These settings for one of the served models (the configured folder belongs to the default)."""
        return self.model_copy(update={"model": name, "models": [],
                                       "model_dir": self.model_dir if name == self.model else None})

    @property
    def threads(self) -> int:
        return self.cpu_threads or os.cpu_count() or 1

    @property
    def pool_workers(self) -> int:
        return self.cpu_pool_workers or (os.cpu_count() or 1)
