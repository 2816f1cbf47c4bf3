"""Class-prior images: generated with the base model when fewer than asked for exist, cached and shared.

The cache folder is `<cache_root>/<hash(base model, class prompt, resolution)>/` and image i is always
`i.png`, drawn with seed i, so any job asking for the same (model, prompt, resolution) reuses what an
earlier job made and only generates the missing ones. Jobs filling the same folder at once take turns on a
file lock, and each image is written to a temporary name and renamed, so no reader ever sees half a file.

The cache is bounded (`DETBOOTH_CLASS_IMAGES_CACHE_GB`): after each use the least recently used folders go
first until the rest fits; the folder just used, and any folder another job holds the lock of, stay.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def cache_key(base_model_id: str, class_prompt: str, resolution: int) -> str:
    blob = json.dumps({"model": base_model_id, "prompt": class_prompt, "resolution": resolution}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def base_model_identity(base_model: Path) -> str:
    """What identifies a base model for the cache: its folder and the configs/weights it holds."""
    base_model = Path(base_model).resolve()
    parts = [str(base_model)]
    for p in sorted(base_model.glob("*/*")):
        if p.is_file():
            st = p.stat()
            parts.append(f"{p.relative_to(base_model)}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _existing(folder: Path, count: int) -> list[Path]:
    return [folder / f"{i:05d}.png" for i in range(count) if (folder / f"{i:05d}.png").is_file()]


def ensure_class_images(base_model: Path, class_prompt: str, resolution: int, count: int, cache_root: Path, *,
                        batch_size: int = 4, inference_steps: int = 50, device: str | None = None,
                        on_progress: Callable[[int, int], None] | None = None,
                        max_cache_bytes: int | None = None) -> list[Path]:
    """Return `count` class image paths, generating the missing ones with the base model's pipeline."""
    folder = Path(cache_root) / cache_key(base_model_identity(base_model), class_prompt, resolution)
    wanted = [folder / f"{i:05d}.png" for i in range(count)]
    if len(_existing(folder, count)) < count:
        _fill(base_model, class_prompt, resolution, wanted, folder, batch_size=batch_size,
              inference_steps=inference_steps, device=device, on_progress=on_progress)
    _mark_used(folder)
    if max_cache_bytes is not None:
        prune_cache(Path(cache_root), max_cache_bytes, keep=folder)
    return wanted


def _fill(base_model: Path, class_prompt: str, resolution: int, wanted: list[Path], folder: Path, *,
          batch_size: int, inference_steps: int, device: str | None,
          on_progress: Callable[[int, int], None] | None) -> None:
    count = len(wanted)
    with _locked(folder):  # another job may be filling the same folder: take turns, then reuse its images
        missing = [i for i in range(count) if not wanted[i].is_file()]
        if missing:
            log.info("generating %d class images for %r at %d px into %s", len(missing), class_prompt,
                     resolution, folder)
            (folder / "meta.json").write_text(json.dumps(
                {"base_model": str(base_model), "class_prompt": class_prompt, "resolution": resolution}))
            _generate(base_model, class_prompt, resolution, missing, folder, batch_size=batch_size,
                      inference_steps=inference_steps, device=device, on_progress=on_progress, total=count)


_USED = ".last_used"


def _mark_used(folder: Path) -> None:
    (folder / _USED).touch()
    os.utime(folder / _USED)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _last_used(folder: Path) -> float:
    marker = folder / _USED
    return marker.stat().st_mtime if marker.exists() else folder.stat().st_mtime


def prune_cache(cache_root: Path, max_bytes: int, *, keep: Path | None = None) -> list[Path]:
    """Remove least recently used cache folders until the cache takes at most `max_bytes`; returns them."""
    if not cache_root.is_dir():
        return []
    folders = [f for f in cache_root.iterdir() if f.is_dir()]
    sizes = {f: _folder_bytes(f) for f in folders}
    total = sum(sizes.values())
    removed = []
    for folder in sorted(folders, key=_last_used):
        if total <= max_bytes:
            break
        if keep is not None and folder.resolve() == Path(keep).resolve():
            continue
        with open(folder / ".lock", "a") as fh:
            try:  # a job filling or reading it right now holds the lock: leave it
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]
        removed.append(folder)
        log.info("class-image cache over %d bytes: removed %s (least recently used)", max_bytes, folder.name)
    return removed


def _generate(base_model: Path, prompt: str, resolution: int, indices: list[int], folder: Path, *,
              batch_size: int, inference_steps: int, device: str | None,
              on_progress: Callable[[int, int], None] | None, total: int) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(base_model, torch_dtype=dtype, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    done = total - len(indices)
    try:
        for start in range(0, len(indices), batch_size):
            batch = indices[start:start + batch_size]
            generators = [torch.Generator(device=device).manual_seed(i) for i in batch]
            with torch.no_grad():
                images = pipe([prompt] * len(batch), generator=generators, num_inference_steps=inference_steps,
                              height=resolution, width=resolution).images
            for i, im in zip(batch, images):
                path = folder / f"{i:05d}.png"
                tmp = folder / f".{i:05d}.png.tmp-{os.getpid()}"
                im.save(tmp, format="PNG")
                os.replace(tmp, path)
            done += len(batch)
            if on_progress is not None:
                on_progress(done, total)
    finally:
        del pipe
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
