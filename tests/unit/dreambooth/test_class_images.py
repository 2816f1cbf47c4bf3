"""Class-prior images: generated once with deterministic seeds, reused, and safe to fill concurrently."""

import multiprocessing

import numpy as np
from PIL import Image

from services.dreambooth.class_images import cache_key, ensure_class_images


def _fill(args):
    base, cache, count = args
    return [str(p) for p in ensure_class_images(base, "a photo of a dog", 64, count, cache, batch_size=2,
                                                inference_steps=1)]


def test_generated_once_then_reused_and_extended(tiny_sd, tmp_path):
    progress = []
    paths = ensure_class_images(tiny_sd, "a photo of a dog", 64, 3, tmp_path, batch_size=2, inference_steps=1,
                                on_progress=lambda done, total: progress.append((done, total)))
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png"]
    assert progress == [(2, 3), (3, 3)]
    assert all(Image.open(p).size == (64, 64) for p in paths)
    first = np.asarray(Image.open(paths[0]), dtype=np.int16)
    mtimes = [p.stat().st_mtime_ns for p in paths]

    again = ensure_class_images(tiny_sd, "a photo of a dog", 64, 3, tmp_path, on_progress=progress.append)
    assert again == paths and [p.stat().st_mtime_ns for p in paths] == mtimes and len(progress) == 2

    more = ensure_class_images(tiny_sd, "a photo of a dog", 64, 4, tmp_path, batch_size=2, inference_steps=1)
    assert len(more) == 4 and [p.stat().st_mtime_ns for p in paths] == mtimes  # only the missing one made

    # image i is a function of (model, prompt, resolution, i): another cache, batched differently, draws it
    # again (up to batched-matmul rounding)
    other = ensure_class_images(tiny_sd, "a photo of a dog", 64, 1, tmp_path / "other", batch_size=1,
                                inference_steps=1)
    assert np.abs(np.asarray(Image.open(other[0]), dtype=np.int16) - first).max() <= 2


def test_cache_key_separates_model_prompt_and_resolution():
    keys = {cache_key("m", "a dog", 512), cache_key("m", "a cat", 512), cache_key("m", "a dog", 768),
            cache_key("n", "a dog", 512)}
    assert len(keys) == 4


def test_two_jobs_filling_the_same_cache_at_once(tiny_sd, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        a, b = pool.map(_fill, [(tiny_sd, tmp_path, 4), (tiny_sd, tmp_path, 4)])
    assert a == b
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    assert not list(folder.glob(".*.tmp-*"))
    for p in a:
        Image.open(p).load()  # complete, decodable files


def _fake_folder(root, name, size, used_at):
    import os

    folder = root / name
    folder.mkdir(parents=True)
    (folder / "00000.png").write_bytes(b"x" * size)
    (folder / ".last_used").touch()
    os.utime(folder / ".last_used", (used_at, used_at))
    return folder


def test_cache_is_bounded_least_recently_used_first(tmp_path):
    import fcntl

    from services.dreambooth.class_images import prune_cache

    old = _fake_folder(tmp_path, "old", 1000, 100)
    middle = _fake_folder(tmp_path, "middle", 1000, 200)
    locked = _fake_folder(tmp_path, "locked", 1000, 50)  # oldest, but a job is filling it right now
    new = _fake_folder(tmp_path, "new", 1000, 300)
    with open(locked / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        removed = prune_cache(tmp_path, 2500, keep=new)
    assert removed == [old, middle]  # oldest first, the locked one skipped, until 2000 ≤ 2500 bytes remain
    assert locked.exists() and new.exists() and not old.exists() and not middle.exists()


def test_using_a_folder_makes_it_recent_and_the_budget_evicts_the_others(tiny_sd, tmp_path):
    import os

    first = ensure_class_images(tiny_sd, "a photo of a dog", 64, 1, tmp_path, inference_steps=1)[0].parent
    os.utime(first / ".last_used", (1, 1))  # long ago
    second = ensure_class_images(tiny_sd, "a photo of a cat", 64, 1, tmp_path, inference_steps=1,
                                 max_cache_bytes=1)[0].parent
    assert second.exists() and not first.exists()  # over budget: the least recently used went, not the new one
    again = ensure_class_images(tiny_sd, "a photo of a cat", 64, 1, tmp_path, inference_steps=1, max_cache_bytes=1)
    assert again[0].is_file()
