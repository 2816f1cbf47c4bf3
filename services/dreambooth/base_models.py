"""Find the base Stable Diffusion model as a local diffusers folder, whatever form it was given in.

Accepted specs (`DETBOOTH_SD_BASE_MODEL`):
- a diffusers folder (has `model_index.json`): used as it is;
- a single `.safetensors` / `.ckpt` checkpoint: converted once with `from_single_file`, cached under
  `<data_dir>/models/converted/`;
- a hub id `org/name`: downloaded into `<data_dir>/models/hub/` when online (`HF_HUB_OFFLINE` unset), or
  taken from there when an earlier download exists;
- unset or `tiny`: the tiny random test model, built once under `<data_dir>/models/tiny-sd`.
"""

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

TINY_SPECS = {"", "tiny"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SINGLE_FILE_SUFFIXES = {".safetensors", ".ckpt"}
# Only what a diffusers pipeline loads: no root-level original checkpoints, no fp16/EMA/non-EMA variants,
# no safety checker (generation runs without it).
_HUB_ALLOW = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors"]
_HUB_IGNORE = ["safety_checker/*", "*.fp16.*", "*ema*", "*.ckpt"]


class BaseModelError(RuntimeError):
    """The base model cannot be found or loaded; the message says what to set."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file()


def is_tiny(path: Path) -> bool:
    return (path / "DETBOOTH_RANDOM_TEST_MODEL").exists()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on this machine (workers share the data folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def resolve_base_model(spec: str | None, data_dir: Path, single_file_config: str | None = None) -> Path:
    """Return a local diffusers folder for `spec` (see the module docstring). Raises BaseModelError."""
    spec = (spec or "").strip()
    models = Path(data_dir) / "models"
    if spec.lower() in TINY_SPECS:
        return tiny_model(models)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not is_diffusers_folder(path):
            raise BaseModelError(f"{path} is a folder but not a diffusers pipeline (no model_index.json)")
        return path
    if path.is_file():
        if path.suffix not in _SINGLE_FILE_SUFFIXES:
            raise BaseModelError(f"{path}: a single-file checkpoint must be .safetensors or .ckpt")
        return convert_single_file(path, models / "converted", single_file_config)
    if _HUB_ID.match(spec):
        return hub_model(spec, models / "hub")
    raise BaseModelError(
        f"DETBOOTH_SD_BASE_MODEL={spec!r} is neither a diffusers folder, a .safetensors file, a hub id "
        "(org/name) nor 'tiny'"
    )


def tiny_model(models_dir: Path) -> Path:
    """The tiny random pipeline, built once (other processes wait on a lock, then reuse it)."""
    from services.dreambooth.tiny_sd import build_tiny_sd

    out = models_dir / "tiny-sd"
    if not is_diffusers_folder(out):
        with _file_lock(models_dir / ".tiny-sd.lock"):
            if not is_diffusers_folder(out):
                build_tiny_sd(out)
    log.warning(
        "BASE MODEL IS THE TINY RANDOM TEST MODEL (%s): images are noise, not pictures. "
        "Set DETBOOTH_SD_BASE_MODEL to a real Stable Diffusion model.",
        out,
    )
    return out


def _file_fingerprint(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def convert_single_file(checkpoint: Path, cache_dir: Path, config: str | None = None) -> Path:
    """Convert a single-file SD checkpoint to a diffusers folder once; later calls reuse the folder."""
    out = cache_dir / f"{checkpoint.stem}-{_file_fingerprint(checkpoint)}"
    if is_diffusers_folder(out):
        return out
    if config is None and hub_offline():
        raise BaseModelError(
            f"converting {checkpoint} offline needs its architecture: set DETBOOTH_SD_SINGLE_FILE_CONFIG "
            "to a local diffusers folder of the same model family (e.g. a Stable Diffusion 1.5 folder)"
        )
    with _file_lock(cache_dir / f".{out.name}.lock"):
        if is_diffusers_folder(out):
            return out
        import torch
        from diffusers import StableDiffusionPipeline

        log.info("converting single-file checkpoint %s to a diffusers folder (once)", checkpoint)
        kwargs = {"config": config} if config else {}
        try:
            pipe = StableDiffusionPipeline.from_single_file(
                str(checkpoint),
                torch_dtype=torch.float32,
                local_files_only=hub_offline(),
                safety_checker=None,
                requires_safety_checker=False,
                **kwargs,
            )
        except Exception as e:  # noqa: BLE001 - diffusers raises many kinds here; say what was tried
            raise BaseModelError(f"could not convert {checkpoint} (config={config!r}): {e}") from e
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            staged = Path(tmp) / "pipe"
            pipe.save_pretrained(staged)
            staged.rename(out)
    return out


def hub_model(repo_id: str, hub_dir: Path) -> Path:
    """A hub model as a local folder: downloaded when online, else an earlier download."""
    out = hub_dir / repo_id.replace("/", "--")
    if hub_offline():
        if is_diffusers_folder(out):
            return out
        raise BaseModelError(
            f"{repo_id} is not downloaded ({out} has no model_index.json) and HF_HUB_OFFLINE is set: "
            "download it on a connected machine or point DETBOOTH_SD_BASE_MODEL at a local folder"
        )
    from huggingface_hub import snapshot_download

    with _file_lock(hub_dir / f".{out.name}.lock"):
        log.info("downloading %s into %s", repo_id, out)
        try:
            snapshot_download(repo_id, local_dir=out, allow_patterns=_HUB_ALLOW, ignore_patterns=_HUB_IGNORE)
            missing = [c for c in _components(out) if not any((out / c).glob("*.safetensors"))]
            if missing:  # older repos ship .bin weights only
                snapshot_download(
                    repo_id,
                    local_dir=out,
                    allow_patterns=[f"{c}/*.bin" for c in missing],
                    ignore_patterns=_HUB_IGNORE,
                )
        except Exception as e:  # noqa: BLE001
            raise BaseModelError(f"could not download {repo_id}: {e}") from e
    if not is_diffusers_folder(out):
        raise BaseModelError(f"{repo_id} is not a diffusers pipeline (no model_index.json)")
    return out


def _components(folder: Path) -> list[str]:
    """Sub-folders of a pipeline that hold weights (unet, vae, text_encoder)."""
    return [c for c in ("unet", "vae", "text_encoder") if (folder / c).is_dir()]
