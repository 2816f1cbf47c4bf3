"""DreamBooth training speed and peak memory: full and LoRA, with and without the text encoder.

Each case runs the real training path (`train_dreambooth`: Lightning Trainer, callbacks, checkpoints off)
and, as the named baseline, a plain PyTorch loop over the same step (the shape of diffusers'
train_dreambooth.py: forward, backward, clip, AdamW, scheduler) in the same process; the ratio
lightning/plain shows what the Lightning machinery costs. The first steps are warm-up and not timed.

    python bench/train_bench.py                     # tiny model, 64 px, on whatever device there is
    python bench/train_bench.py --steps 20 --json out.json

Peak memory: CUDA `max_memory_allocated` on a GPU; on CPU the process's peak resident set (VmHWM, reset
before each case through /proc/self/clear_refs).
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image

from services.contracts.finetune import FinetuneConfig

WARMUP_STEPS = 2


class StepTimer(pl.Callback):
    def __init__(self):
        self.times: list[float] = []
        self._last = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())


def steps_per_s(times: list[float], warmup: int = WARMUP_STEPS) -> float:
    timed = times[warmup - 1:] if warmup > 0 else times
    return (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def peak_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def synthetic_images(n: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def make_config(method: str, train_text_encoder: bool, resolution: int, steps: int, precision: str,
                **kw) -> FinetuneConfig:
    return FinetuneConfig(
        instance_prompt="a photo of sks dog", class_prompt="a photo of a dog", method=method,
        train_text_encoder=train_text_encoder, resolution=resolution, max_train_steps=steps,
        checkpoint_every=10**6, mixed_precision=precision, center_crop=True, **kw,
    ).resolved(seed=0)


def measure_lightning(config: FinetuneConfig, base: Path, instance, klass) -> dict[str, float]:
    from services.dreambooth.train.run import RunHooks, train_dreambooth

    timer = StepTimer()
    reset_peak()
    with tempfile.TemporaryDirectory() as work:
        train_dreambooth(config, base, instance, Path(work), class_images=klass,
                         hooks=RunHooks(callbacks=[timer]), export=False)
    return {"steps_per_s": steps_per_s(timer.times), "peak_mib": peak_mib()}


def measure_plain(config: FinetuneConfig, base: Path, instance, klass) -> dict[str, float]:
    """The baseline: the same module and step in a hand-written loop (no Trainer)."""
    from transformers import CLIPTokenizer

    from services.dreambooth.data import DreamBoothStream, collate, tokenize
    from services.dreambooth.train.module import DreamBoothModule

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reset_peak()
    module = DreamBoothModule(config, base).to(device)
    tok = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    stream = DreamBoothStream(instance, tokenize(tok, config.instance_prompt), resolution=config.resolution,
                              seed=0, center_crop=True, class_images=klass,
                              class_prompt_ids=tokenize(tok, config.class_prompt))
    params = [p for group in module.trainable_parameters().values() for p in group]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.adam_weight_decay)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(config.mixed_precision)
    use_amp = dtype is not None and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and dtype == torch.float16)
    times = []
    for step in range(config.max_train_steps):
        batch = collate([stream.example(step * config.train_batch_size + i)
                         for i in range(config.train_batch_size)])
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=use_amp):
            loss = module._common_step(batch).loss
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    result = {"steps_per_s": steps_per_s(times), "peak_mib": peak_mib()}
    del module, opt
    return result


def run_cases(base: Path, *, resolution: int, steps: int, precision: str, cases: list[tuple[str, bool]],
              gradient_checkpointing: bool = False, baseline: bool = True) -> list[dict]:
    instance = synthetic_images(3, resolution, 0)
    klass = synthetic_images(2, resolution, 1)
    rows = []
    for method, te in cases:
        cfg = make_config(method, te, resolution, steps, precision, gradient_checkpointing=gradient_checkpointing)
        row = {"method": method, "train_text_encoder": te, "resolution": resolution, "precision": precision,
               "batch": "1 instance + 1 class", "steps": steps}
        row["lightning"] = measure_lightning(cfg, base, instance, klass)
        if baseline:
            row["plain_loop"] = measure_plain(cfg, base, instance, klass)
            row["lightning_over_plain_speed"] = row["lightning"]["steps_per_s"] / row["plain_loop"]["steps_per_s"]
        rows.append(row)
        print(format_row(row), flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def format_row(row: dict) -> str:
    lt = row["lightning"]
    text = (f"{row['method']:4s} te={'yes' if row['train_text_encoder'] else 'no ':3s} {row['resolution']}px "
            f"{row['precision']:10s} lightning {lt['steps_per_s']:7.3f} steps/s peak {lt['peak_mib']:8.0f} MiB")
    if "plain_loop" in row:
        pl_ = row["plain_loop"]
        text += (f" | plain loop {pl_['steps_per_s']:7.3f} steps/s peak {pl_['peak_mib']:8.0f} MiB"
                 f" | ratio {row['lightning_over_plain_speed']:.2f}")
    return text


ALL_CASES = [("full", False), ("full", True), ("lora", False), ("lora", True)]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="steps per case (the first 2 are warm-up)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    ap.add_argument("--base-model", help="diffusers folder; default: the tiny random model")
    ap.add_argument("--no-baseline", action="store_true", help="skip the plain-loop baseline")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    if args.base_model:
        base = Path(args.base_model)
    else:
        from services.dreambooth.base_models import resolve_base_model

        base = resolve_base_model("tiny", Path(tempfile.gettempdir()) / "detbooth-bench")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"train_bench: {base.name} on {device}; baseline = plain PyTorch loop over the same step", flush=True)
    rows = run_cases(base, resolution=args.resolution, steps=args.steps, precision=args.precision,
                     cases=ALL_CASES, baseline=not args.no_baseline)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
