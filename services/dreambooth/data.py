"""Training data: validated instance images, class images, and one batch holding both.

Every random choice (which image, crop offset, flip) is a function of the seed and the sample's global
index, and the stream of samples starts where the resumed step left off: a job resumed from a checkpoint
sees exactly the batches an uninterrupted run would have seen.
"""

import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


class BadImage(ValueError):
    """An instance image that cannot be trained on; the message says which and why."""


def load_training_image(path: Path, *, min_side: int, name: str | None = None) -> Image.Image:
    """Decode an image fully, apply its EXIF orientation, convert to RGB and check its size."""
    label = name or Path(path).name
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, rgba)
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadImage(f"{label}: not a readable image ({type(e).__name__}: {e})") from None
    if min(rgb.size) < min_side:
        raise BadImage(f"{label}: {rgb.size[0]}x{rgb.size[1]} px is too small; the shorter side must be "
                       f"at least {min_side} px")
    return rgb


def resize_shorter_side(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return im if new == im.size else im.resize(new, Image.Resampling.BICUBIC)


def to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [-1, 1]."""
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def sample_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{stream}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def crop_and_flip(im: Image.Image, size: int, rng: np.random.Generator, *, center_crop: bool,
                  random_flip: bool) -> Image.Image:
    w, h = im.size
    if center_crop:
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    out = im.crop((left, top, left + size, top + size))
    if random_flip and rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def tokenize(tokenizer, prompt: str) -> torch.Tensor:
    return tokenizer(prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids[0]


class DreamBoothStream(torch.utils.data.IterableDataset):
    """An endless, deterministic stream of examples: one instance image (+ one class image) each.

    Sample k (counted over the whole run, all devices) uses instance image perm_e[k mod n] with a
    permutation per pass e = k // n, as a shuffled DataLoader would. `start` is read when iteration
    begins, so a resumed run continues at the sample after the last one it trained on.
    """

    def __init__(self, instance_images: Sequence[Image.Image], instance_prompt_ids: torch.Tensor, *,
                 resolution: int, seed: int, center_crop: bool = False, random_flip: bool = False,
                 class_images: Sequence[Image.Image] = (), class_prompt_ids: torch.Tensor | None = None,
                 start: Callable[[], int] = lambda: 0, rank: int = 0, world_size: int = 1):
        if not instance_images:
            raise ValueError("no instance images")
        self.instance = [resize_shorter_side(im, resolution) for im in instance_images]
        self.klass = [resize_shorter_side(im, resolution) for im in class_images]
        if self.klass and class_prompt_ids is None:
            raise ValueError("class images need a class prompt")
        self.instance_ids = instance_prompt_ids
        self.class_ids = class_prompt_ids
        self.resolution = resolution
        self.seed = seed
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.start = start
        self.rank = rank
        self.world_size = world_size

    def _pick(self, images: list[Image.Image], stream: str, k: int) -> tuple[torch.Tensor, int]:
        n = len(images)
        perm = sample_rng(self.seed, f"{stream}-perm", k // n).permutation(n)
        im = crop_and_flip(images[perm[k % n]], self.resolution, sample_rng(self.seed, stream, k),
                           center_crop=self.center_crop, random_flip=self.random_flip)
        return to_tensor(im), int(perm[k % n])

    def example(self, k: int) -> dict[str, torch.Tensor]:
        pixels, which = self._pick(self.instance, "instance", k)
        ex = {"pixel_values": pixels, "input_ids": self.instance_ids, "sample_index": torch.tensor(k),
              "image_index": torch.tensor(which)}
        if self.klass:
            ex["class_pixel_values"], _ = self._pick(self.klass, "class", k)
            ex["class_input_ids"] = self.class_ids
        return ex

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        rank, world_size = self.rank, self.world_size
        if world_size == 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()  # DDP
        k = self.start() * world_size + rank
        while True:
            yield self.example(k)
            k += world_size


def collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a batch; with class images, the class half follows the instance half in the same tensors
    (one forward pass for both, split again for the loss), as in diffusers' train_dreambooth.py."""
    pixels = [e["pixel_values"] for e in examples]
    ids = [e["input_ids"] for e in examples]
    with_prior = "class_pixel_values" in examples[0]
    if with_prior:
        pixels += [e["class_pixel_values"] for e in examples]
        ids += [e["class_input_ids"] for e in examples]
    return {
        "pixel_values": torch.stack(pixels).contiguous(memory_format=torch.contiguous_format).float(),
        "input_ids": torch.stack(ids),
        "sample_index": torch.stack([e["sample_index"] for e in examples]),
        "with_prior": torch.tensor(with_prior),
    }
