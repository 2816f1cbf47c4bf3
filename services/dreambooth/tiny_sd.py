"""A tiny Stable Diffusion pipeline with random weights, saved as a normal diffusers folder.

Tests and the offline default use it through the same loading code as real weights. Its tokenizer is
the real CLIP BPE tokenizer, built from the vocabulary file that the `open_clip_torch` package ships.
"""

import gzip
import importlib.metadata
import json
import logging
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

TINY_MODEL_NAME = "detbooth/tiny-sd-random"
_VOCAB_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2  # the merges OpenAI's CLIP tokenizer uses


def clip_bpe_vocab_path() -> Path:
    """The gzipped CLIP BPE merges list, found without importing open_clip (which needs torchvision)."""
    path = Path(str(importlib.metadata.distribution("open_clip_torch").locate_file(_VOCAB_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install open_clip_torch (pip install --no-deps)")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_clip_tokenizer_files(folder: Path) -> None:
    """Write vocab.json and merges.txt of the CLIP ViT-L/14 tokenizer (49,408 tokens)."""
    lines = gzip.open(clip_bpe_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : _N_MERGES + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")


def build_clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder)
    # transformers 5 ignores vocab_file/merges_file keyword arguments: load from the folder instead
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, pad_token="<|endoftext|>")


def build_tiny_sd(out_dir: Path, seed: int = 0) -> Path:
    """Build and save the tiny pipeline to `out_dir` (atomically); returns `out_dir`."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        projection_dim=32,
    ))
    # Stable Diffusion 1.x's inference scheduler settings
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                              set_alpha_to_one=False)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        tokenizer = build_clip_tokenizer(Path(tmp) / "tok-src")
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        staged = Path(tmp) / "pipe"
        pipe.save_pretrained(staged)
        (staged / "DETBOOTH_RANDOM_TEST_MODEL").write_text(
            "Random weights for tests and offline demos: it draws noise, not pictures.\n")
        try:
            staged.rename(out_dir)
        except OSError:
            if not (out_dir / "model_index.json").exists():  # another process won the race: keep theirs
                raise
    return out_dir
