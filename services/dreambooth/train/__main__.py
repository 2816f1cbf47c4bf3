"""Train outside Celery, e.g. on several GPUs with DDP (Lightning starts one copy of this command per rank):

    python -m services.dreambooth.train --config finetune.yaml --images photos/ --workdir runs/sks-dog \
        [--base-model runwayml/stable-diffusion-v1-5] [--devices 4]

Class images are generated into (or reused from) `<data-dir>/class_images`, as the worker does; running
the same command again resumes from the newest checkpoint in `<workdir>/checkpoints`.
"""

import argparse
import logging
import os
import random
from pathlib import Path

from services.contracts.finetune import FinetuneConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.dreambooth.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True, help="FinetuneConfig as YAML")
    ap.add_argument("--images", type=Path, required=True, help="folder of instance images")
    ap.add_argument("--workdir", type=Path, required=True, help="checkpoints/, logs/ and model/ go here")
    ap.add_argument("--base-model", help="overrides the config's base_model (default: the tiny test model)")
    ap.add_argument("--data-dir", type=Path, default=Path("./data"), help="models and class-image cache")
    ap.add_argument("--devices", type=int, help="overrides the config's devices")
    ap.add_argument("--accelerator", choices=["gpu", "cpu"], help="default: gpu when there is one")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from services.dreambooth.base_models import resolve_base_model
    from services.dreambooth.class_images import ensure_class_images
    from services.dreambooth.data import load_training_image
    from services.dreambooth.train.run import train_dreambooth

    config = FinetuneConfig.from_yaml(args.config.read_text())
    if args.devices:
        config = config.model_copy(update={"devices": args.devices})
    # Lightning starts the other ranks by running this command again once rank 0 calls fit: they (and any
    # rerun that resumes) read the config rank 0 resolved and saved
    saved = args.workdir / "config.yaml"
    if saved.exists():
        config = FinetuneConfig.from_yaml(saved.read_text())
    else:
        config = config.resolved(seed=random.SystemRandom().randrange(2**31))
        args.workdir.mkdir(parents=True, exist_ok=True)
        tmp = args.workdir / f".config.yaml.tmp-{os.getpid()}"
        tmp.write_text(config.to_yaml())
        os.replace(tmp, saved)
    base = resolve_base_model(args.base_model or config.base_model or "tiny", args.data_dir)
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images = [load_training_image(p, min_side=config.min_image_side) for p in paths]
    class_images = []
    if config.with_prior_preservation:
        class_paths = ensure_class_images(base, config.class_prompt, config.resolution, config.num_class_images,
                                          args.data_dir / "class_images", batch_size=config.class_images_batch_size,
                                          inference_steps=config.class_images_inference_steps)
        class_images = [load_training_image(p, min_side=1) for p in class_paths]
    result = train_dreambooth(config, base, images, args.workdir, class_images=class_images,
                              accelerator=args.accelerator, strategy="ddp")
    if result.model_path is not None:
        print(f"model: {result.model_path} ({result.global_step} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
