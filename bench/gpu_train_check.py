"""DreamBooth training at Stable Diffusion 1.5 size on one GPU: steps/s and peak memory, full and LoRA.

Builds an SD-1.5-shaped pipeline (UNet 860M, CLIP ViT-L/14 text encoder, SD VAE) from configs with random
weights, saves it as a diffusers folder, and trains it with the real path (`train_dreambooth`) at 512 px,
batch 1 instance + 1 class image, bf16-mixed. Speed does not depend on the weights' values.

    python bench/gpu_train_check.py                # on a GPU, about 2-4 minutes
    python bench/gpu_train_check.py --smoke        # tiny sizes on CPU (what the unit test runs)
    python bench/gpu_train_check.py --text-encoder # also the cases that train the text encoder
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from train_bench import run_cases


def build_sd15_random(out_dir: Path) -> Path:
    """An SD-1.5-sized pipeline with random weights (the tokenizer is the real CLIP BPE one)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from services.dreambooth.tiny_sd import build_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # the SD 1.x UNet config
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(  # CLIP ViT-L/14's text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=768,
    ))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    tokenizer = build_clip_tokenizer(out_dir.parent / "tokenizer-src")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out_dir)
    n = sum(p.numel() for p in unet.parameters()) / 1e6
    print(f"built SD-1.5-size random pipeline (UNet {n:.0f}M params) in {out_dir}", flush=True)
    return out_dir


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny model, 64 px, fp32, 3 steps: checks the script")
    ap.add_argument("--steps", type=int, default=None, help="steps per case (first 2 are warm-up; default 12)")
    ap.add_argument("--text-encoder", action="store_true", help="also train the text encoder (2 more cases)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--baseline", action="store_true", help="also time the plain PyTorch loop (slower check)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_train_check: no CUDA device (use --smoke to check the script on CPU)")
    cases = [("full", False), ("lora", False)]
    if args.text_encoder:
        cases += [("full", True), ("lora", True)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.smoke:
            from services.dreambooth.tiny_sd import build_tiny_sd

            base = build_tiny_sd(Path(tmp) / "tiny-sd")
            resolution, precision, steps = 64, "32", args.steps or 3
        else:
            base = build_sd15_random(Path(tmp) / "sd15-random")
            resolution, precision, steps = 512, "bf16-mixed", args.steps or 12
        print(f"base model ready in {time.perf_counter() - t0:.1f} s", flush=True)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        print(f"gpu_train_check on {device}: {resolution}px, {precision}, batch 1 instance + 1 class, "
              f"{steps} steps per case", flush=True)
        rows = run_cases(base, resolution=resolution, steps=steps, precision=precision, cases=cases,
                         gradient_checkpointing=args.gradient_checkpointing, baseline=args.baseline)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
