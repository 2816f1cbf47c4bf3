"""Instance-image validation and the deterministic, resumable example stream."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from services.dreambooth.data import BadImage, DreamBoothStream, collate, load_training_image


def _save(tmp_path, name, im, **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (80, 64), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = _save(tmp_path, "rot.jpg", im, exif=exif.tobytes())
    assert load_training_image(path, min_side=32).size == (64, 80)


def test_alpha_and_grayscale_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    out = load_training_image(_save(tmp_path, "a.png", rgba), min_side=32)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert load_training_image(_save(tmp_path, "g.png", Image.new("L", (64, 64), 7)), min_side=32).mode == "RGB"


@pytest.mark.parametrize("content, message", [
    (b"not an image at all", "not a readable image"),
    (None, "not a readable image"),  # truncated PNG
])
def test_undecodable_images_are_refused(tmp_path, content, message):
    if content is None:
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
        content = buf.getvalue()[:60]
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(BadImage, match=message):
        load_training_image(path, min_side=32, name="image 2")


def test_too_small_image_is_refused(tmp_path):
    with pytest.raises(BadImage, match="image 0: 40x30 px is too small"):
        load_training_image(_save(tmp_path, "s.png", Image.new("RGB", (40, 30))), min_side=32, name="image 0")


def _stream(start=0, **kw):
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)) for _ in range(3)]
    cls = [Image.fromarray(rng.integers(0, 255, (70, 64, 3), dtype=np.uint8)) for _ in range(2)]
    return DreamBoothStream(imgs, torch.arange(77), resolution=64, seed=3, class_images=cls,
                            class_prompt_ids=torch.arange(77) + 1, start=lambda: start, random_flip=True, **kw)


def test_stream_is_deterministic_and_resumes_mid_run():
    full = [ex for ex, _ in zip(_stream(), range(9))]
    tail = [ex for ex, _ in zip(_stream(start=5), range(4))]
    for a, b in zip(full[5:], tail):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and int(a["sample_index"]) == int(b["sample_index"])
    # each pass over the 3 instance images uses every image once
    assert sorted(int(e["image_index"]) for e in full[:3]) == [0, 1, 2]
    assert sorted(int(e["image_index"]) for e in full[3:6]) == [0, 1, 2]


def test_stream_splits_samples_across_ranks():
    r0 = [int(e["sample_index"]) for e, _ in zip(_stream(rank=0, world_size=2), range(3))]
    r1 = [int(e["sample_index"]) for e, _ in zip(_stream(rank=1, world_size=2), range(3))]
    assert r0 == [0, 2, 4] and r1 == [1, 3, 5]


def test_collate_puts_class_half_after_instance_half():
    s = _stream()
    batch = collate([s.example(0), s.example(1)])
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert torch.equal(batch["input_ids"][0], torch.arange(77))
    assert torch.equal(batch["input_ids"][2], torch.arange(77) + 1)
    assert bool(batch["with_prior"])
