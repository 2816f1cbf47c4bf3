"""Is batching same-shape generate requests faster than running them one by one? Measured in one run.

Baseline: N single-image requests run one after another (what the worker does without batching).
Candidate: the same N images in one sampler call (CFG batch 2N). Both go through
`services.dreambooth.sampling.sample`, same seeds, same model. Prints seconds per image of each and the ratio
(baseline / batched; above 1 means batching is faster).

    python bench/gen_bench.py                      # tiny model 64 px and SD-1.5 size 256 px, on this machine
    python bench/gen_bench.py --models sd15 --size 512 --steps 20    # on a GPU
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from gpu_gen_check import SD15_SCHEDULER, build_components  # noqa: E402

from services.dreambooth.pipeline_cache import LoadedModel  # noqa: E402
from services.dreambooth.sampling import sample  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model: LoadedModel, n: int, size: int, steps: int, device: torch.device) -> dict:
    kw = dict(guidance_scale=7.5, num_inference_steps=steps, width=size, height=size, scheduler="dpmsolver++")
    prompts = [
        f"a photo of sks dog, variation {i}" for i in range(n)
    ]  # different requests, different prompts
    sample(model, prompts[:1], [""], [0], **kw)  # warm-up
    _sync(device)
    t = time.perf_counter()
    for i in range(n):
        sample(model, [prompts[i]], [""], [i], **kw)
    _sync(device)
    sequential = time.perf_counter() - t
    t = time.perf_counter()
    sample(model, prompts, [""] * n, list(range(n)), **kw)
    _sync(device)
    batched = time.perf_counter() - t
    return {
        "sequential_s_per_image": round(sequential / n, 4),
        "batched_s_per_image": round(batched / n, 4),
        "ratio_sequential_over_batched": round(sequential / batched, 3),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,sd15", help="tiny (64 px default) and/or sd15 (SD-1.5 size)")
    p.add_argument("--n", type=int, default=4, help="concurrent requests of one image each")
    p.add_argument("--size", type=int, default=None, help="pixels; default 64 for tiny, 256 for sd15")
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    print(
        f"gen batching bench: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} "
        f"({torch.get_num_threads()} threads), {args.n} requests, {args.steps} steps, guidance 7.5",
        flush=True,
    )
    rows = []
    for which in args.models.split(","):
        parts = build_components(device, dtype, tiny=which == "tiny")
        model = LoadedModel(name=which, scheduler_config=SD15_SCHEDULER, **parts)
        size = args.size or (64 if which == "tiny" else 256)
        row = {
            "model": which,
            "size": size,
            "n": args.n,
            "steps": args.steps,
            **measure(model, args.n, size, args.steps, device),
        }
        rows.append(row)
        print(
            f"  {which:5s} {size}px: one by one {row['sequential_s_per_image']:.3f} s/image, batched "
            f"{row['batched_s_per_image']:.3f} s/image, ratio {row['ratio_sequential_over_batched']:.2f}",
            flush=True,
        )
    print("GEN_BENCH_JSON " + json.dumps(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
