"""Seconds per image of the worker's generation path at Stable Diffusion 1.5 size, eager vs optimised.

Random weights built from SD-1.5 configs (UNet 860M, VAE 84M, CLIP ViT-L text encoder 123M), 512×512,
50 steps, guidance 7.5, fp16, batch 1 and 4, through `services.dreambooth.sampling.sample` (the code the
worker runs). Variants:
  eager     classic attention (AttnProcessor), NCHW, no compile      <- the baseline
  sdpa      scaled_dot_product_attention (AttnProcessor2_0)
  sdpa+cl   sdpa + channels_last UNet/VAE
  compiled  sdpa + channels_last + torch.compile(unet) (inductor; --compile-mode, default "default")
Prints one line per (variant, batch) and a final JSON line. `--smoke` runs tiny configs for 2 steps on any
device (CPU included; compile uses the 'eager' backend there) to check the script itself.

    python bench/gpu_gen_check.py            # on a GPU, a few minutes
    python bench/gpu_gen_check.py --smoke    # anywhere, seconds
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from services.dreambooth.pipeline_cache import LoadedModel  # noqa: E402
from services.dreambooth.sampling import sample  # noqa: E402
from services.dreambooth.tiny_sd import build_clip_tokenizer  # noqa: E402

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}


def build_components(device: torch.device, dtype: torch.dtype, tiny: bool) -> dict:
    """UNet, VAE, text encoder of SD 1.5 size (or tiny) with random weights, made directly on `device`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if tiny:
        unet_kw = dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
        )
        vae_kw = dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
        )
        text_kw = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
        )
    else:  # Stable Diffusion 1.5
        unet_kw = dict(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=8,
        )
        vae_kw = dict(
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
        )
        text_kw = dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
        )
    with torch.device(device):
        unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, **unet_kw)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, **vae_kw)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
                **text_kw,
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(Path(tmp))
    parts = {"unet": unet, "vae": vae, "text_encoder": text_encoder}
    for m in parts.values():
        m.to(dtype).eval().requires_grad_(False)
    return {**parts, "tokenizer": tokenizer}


def configure(parts: dict, variant: str, device: torch.device, smoke: bool, compile_mode: str) -> LoadedModel:
    """A LoadedModel over the shared weights, set up as `variant` asks (undoing the previous variant)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet, vae = parts["unet"], parts["vae"]
    fmt = torch.channels_last if variant in ("sdpa+cl", "compiled") else torch.contiguous_format
    unet.to(memory_format=fmt)
    vae.to(memory_format=fmt)
    unet.set_attn_processor(AttnProcessor() if variant == "eager" else AttnProcessor2_0())
    vae.set_attn_processor(AttnProcessor() if variant == "eager" else AttnProcessor2_0())
    run_unet = unet
    if variant == "compiled":
        if smoke or device.type != "cuda":
            run_unet = torch.compile(unet, backend="eager")
        else:
            torch._inductor.config.conv_1x1_as_mm = True
            torch._dynamo.config.automatic_dynamic_shapes = False  # one static graph per batch size
            run_unet = torch.compile(unet, mode=compile_mode)
    return LoadedModel(
        name=variant,
        unet=run_unet,
        vae=vae,
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        scheduler_config=SD15_SCHEDULER,
    )


def time_per_image(model: LoadedModel, batch: int, args, device: torch.device) -> tuple[float, float]:
    """(seconds per image over `args.repeats` timed runs, seconds of the untimed first run)."""

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        sample(
            model,
            ["a photo of sks dog on the moon"] * batch,
            [""] * batch,
            list(range(batch)),
            guidance_scale=args.guidance,
            num_inference_steps=args.steps,
            width=args.size,
            height=args.size,
            scheduler=args.scheduler,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    first = once()  # warm-up: cuDNN autotune, compilation
    runs = [once() for _ in range(args.repeats)]
    return min(runs) / batch, first


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--smoke", action="store_true", help="tiny configs, 64 px, 2 steps, float32: checks the script"
    )
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--batches", default="1,4", help="comma list of batch sizes")
    p.add_argument("--variants", default="eager,sdpa,sdpa+cl,compiled")
    p.add_argument("--scheduler", default="dpmsolver++")
    p.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode for the 'compiled' variant (max-autotune-no-cudagraphs tunes longer)",
    )
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up; the fastest counts")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.size, args.steps, args.repeats = 64, 2, 1
    dtype = torch.float16 if device.type == "cuda" and not args.smoke else torch.float32
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"gen check: {name}, torch {torch.__version__}, {'tiny' if args.smoke else 'SD-1.5 size'} random "
        f"weights, {args.size}x{args.size}, {args.steps} steps, guidance {args.guidance}, {dtype}, "
        f"scheduler {args.scheduler}",
        flush=True,
    )
    t = time.perf_counter()
    parts = build_components(device, dtype, tiny=args.smoke)
    print(f"  built components in {time.perf_counter() - t:.1f} s", flush=True)
    results = []
    for variant in args.variants.split(","):
        model = configure(parts, variant, device, args.smoke, args.compile_mode)
        for batch in (int(b) for b in args.batches.split(",")):
            try:
                per_image, first = time_per_image(model, batch, args, device)
            except Exception as e:  # noqa: BLE001 - report and go on with the other variants
                print(f"  {variant:9s} batch {batch}: FAILED {type(e).__name__}: {e}", flush=True)
                results.append({"variant": variant, "batch": batch, "error": f"{type(e).__name__}: {e}"})
                continue
            results.append(
                {
                    "variant": variant,
                    "batch": batch,
                    "s_per_image": round(per_image, 4),
                    "first_run_s": round(first, 2),
                }
            )
            print(
                f"  {variant:9s} batch {batch}: {per_image:.3f} s/image  (first run {first:.1f} s)",
                flush=True,
            )
        if device.type == "cuda":
            torch._dynamo.reset()
    ok = [r for r in results if "s_per_image" in r]
    base = {r["batch"]: r["s_per_image"] for r in ok if r["variant"] == "eager"}
    for r in ok:
        if r["batch"] in base:
            r["speedup_vs_eager"] = round(base[r["batch"]] / r["s_per_image"], 2)
    summary = {
        "device": name,
        "dtype": str(dtype),
        "size": args.size,
        "steps": args.steps,
        "results": results,
    }
    b1 = [r["s_per_image"] for r in ok if r["batch"] == 1]
    if device.type == "cuda" and not args.smoke and b1:
        best_b1 = min(b1)
        summary["best_batch1_s_per_image"] = best_b1
        summary["target_0.6s_met"] = best_b1 <= 0.6
    print("GEN_CHECK_JSON " + json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
