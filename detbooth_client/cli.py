"""`detbooth`: the command-line client of a DetBooth gateway.

The gateway's URL and API key come from --url / --api-key or DETBOOTH_URL / DETBOOTH_API_KEY.
Errors are one line on stderr and a non-zero exit (1: the request or the job failed, 2: bad usage).
"""

import argparse
import base64
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from detbooth_client.client import ApiError, DetBoothClient
from services.contracts.detect import ImageResult
from services.contracts.finetune import TrainingMetrics
from services.contracts.jobs import GenerateResultView, JobView

DEFAULT_CLASS_IMAGES = 50  # the worker's own default (100) makes a first fine-tune wait long
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


class CliError(Exception):
    """A failure to report as one line and exit 1."""


class UsageError(CliError):
    """Bad usage found before anything is sent: one line, exit 2 (as argparse's own usage errors)."""

    def __init__(self, message: str, command: str | None = None):
        super().__init__(message)
        self.command = command


# ---------------------------------------------------------------- progress


class ProgressBar:
    """A one-line bar redrawn in place on a terminal. On a pipe, a line per step change, at most
    `pipe_lines_per_s` a second; an update held back by that limit is printed later, never lost."""

    def __init__(self, out: TextIO, width: int = 30, pipe_lines_per_s: float = 4.0):
        self.out, self.width = out, width
        self.tty = out.isatty()
        self.min_gap_s = 1.0 / pipe_lines_per_s
        self._last_print = float("-inf")
        self._last_line = ""
        self._pending: str | None = None
        self._drawn = False

    def update(self, step: int, total: int, metrics: TrainingMetrics, eta_s: float | None,
               phase: str | None = None, rate: float | None = None) -> None:
        """`phase` (a fine-tune's) prefixes the line; `rate` is its units a second (images while making
        class images); the training metrics are shown while training (or when no phase is given)."""
        frac = min(1.0, step / total) if total else 0.0
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        shown: tuple[tuple[str, float | None], ...] = ()
        if phase in (None, "training"):
            shown = (("loss", metrics.loss), ("it/s", metrics.it_per_s or rate), ("lr", metrics.lr))
        elif phase == "class_images":
            shown = (("images/s", rate),)
        extra = "".join(f"  {name} {v:.4g}" for name, v in shown if v is not None)
        eta = f"  eta {eta_s:.0f}s" if eta_s is not None else ""
        label = f"{phase.replace('_', ' ')} " if phase else ""
        line = f"{label}[{bar}] {step}/{total or '?'}{extra}{eta}"
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
            self._drawn = True
            self.out.flush()
            return
        if line == self._last_line:
            return
        self._pending = line
        if time.monotonic() - self._last_print >= self.min_gap_s or (total and step >= total):
            self._flush_pending()

    def _flush_pending(self) -> None:
        if self._pending is not None:
            self.out.write(self._pending + "\n")
            self.out.flush()
            self._last_line, self._pending = self._pending, None
            self._last_print = time.monotonic()

    def message(self, text: str) -> None:
        self.close()
        self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        self._flush_pending()
        if self._drawn:
            self.out.write("\n")
            self._drawn = False


def progress_metrics(data: dict[str, Any]) -> TrainingMetrics:
    """The typed metrics of a `progress` event (generation progress carries none)."""
    return TrainingMetrics.model_validate(data.get("metrics") or {})


def follow(client: DetBoothClient, job_id: str, bar: ProgressBar | None) -> JobView:
    """Follow a job's events to its end (progress on the bar), then return the finished job."""
    for event in client.events(job_id):
        if event.event == "progress" and bar is not None:
            p = event.data.get("progress", {})
            phase = p.get("phase")
            shown = (p.get("phases") or {}).get(phase) or p  # a fine-tune's current phase, else the job's steps
            bar.update(
                int(shown.get("step", 0)),
                int(shown.get("total", 0)),
                progress_metrics(event.data),
                shown.get("eta_s"),
                phase=phase,
                rate=shown.get("it_per_s"),
            )
        elif event.event == "status" and bar is not None:
            bar.message(f"status: {event.data.get('status')}")
    if bar is not None:
        bar.close()
    job = client.job(job_id)
    if not job.status.terminal:  # the stream ended early (e.g. the job expired): poll instead
        job = client.wait(job_id)
    return job


def ensure_succeeded(job: JobView) -> JobView:
    if job.status == "succeeded":
        return job
    reason = f"{job.error.code}: {job.error.message}" if job.error else "no error recorded"
    raise CliError(f"job {job.id} {job.status}: {reason}" if job.status == "failed" else f"job {job.id} {job.status}")


# ---------------------------------------------------------------- commands


def cmd_detect(client: DetBoothClient, args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.images]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"no such file: {p}", "detect")
    if args.draw:
        draw_target(len(paths), Path(args.draw))  # a bad target is refused before the request
    params = {
        "thresh": args.thresh,
        "box_thresh": args.box_thresh,
        "unclip_ratio": args.unclip_ratio,
        "box_type": args.box_type,
        "limit_side_len": args.limit_side_len,
        "pages": args.pages,
        "dpi": args.dpi,
        "previews": True if args.draw else None,  # PDF/TIFF pages come back as JPEGs to draw on
        "model": args.model,
    }
    body = client.detect(paths, **params)
    if args.draw:
        for path in draw_boxes(paths, body.results, Path(args.draw)):
            print(f"drew {path}", file=sys.stderr)
    if args.json:
        json.dump(body.model_dump(mode="json"), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"model: {body.model}")
    for res in body.results:
        print(f"{result_name(paths, res)}: {res.width}x{res.height}, {len(res.boxes)} boxes")
        for box in res.boxes:
            pts = " ".join(f"{x:.0f},{y:.0f}" for x, y in box.points)
            print(f"  {box.score:.3f}  {pts}")
    return 0


def result_name(paths: Sequence[Path], res: ImageResult) -> str:
    """`doc.pdf page 2` for a page of a document, the path for an image."""
    path = paths[res.source]
    return f"{path} page {res.page}" if res.page is not None else str(path)


def _page_image(paths: Sequence[Path], res: ImageResult):
    """The image a result's boxes belong on: the page's preview from the gateway, or the file itself with its
    EXIF orientation applied, as the API does, so the boxes land on the text."""
    from PIL import Image, ImageOps

    if res.preview:
        data = base64.b64decode(res.preview.split(",", 1)[1])
        with Image.open(io.BytesIO(data)) as page:
            return page.convert("RGB")
    with Image.open(paths[res.source]) as src:
        return ImageOps.exif_transpose(src).convert("RGB")


def draw_target(count: int, out: Path) -> bool:
    """True when `out` names one image file, False for a folder; a file name for several inputs is bad usage."""
    is_file = out.suffix.lower() in IMAGE_SUFFIXES and not out.is_dir()
    if is_file and count > 1:
        raise UsageError(f"--draw {out} names one image file, but {count} files were given: "
                         "give a folder for several", "detect")
    if not is_file and out.exists() and not out.is_dir():
        raise UsageError(f"--draw {out} exists and is not a folder", "detect")
    return is_file


def draw_boxes(paths: Sequence[Path], results: Sequence[ImageResult], out: Path) -> list[Path]:
    """Each image (each page of a PDF or TIFF) with its boxes drawn; `out` is a file for one input (by its
    suffix; a document's pages get numbered files beside it: OUT.p2.png), else a folder."""
    from PIL import ImageDraw

    single = draw_target(len(paths), out)
    if not single:
        out.mkdir(parents=True, exist_ok=True)
    written = []
    for res in results:
        img = _page_image(paths, res)
        scale = img.width / res.width if res.width else 1.0  # a preview may be smaller than the page
        draw = ImageDraw.Draw(img)
        line = max(2, round(max(img.size) / 400))
        for box in res.boxes:
            pts = [(x * scale, y * scale) for x, y in box.points]
            draw.line(pts + [pts[0]], fill=(0, 200, 80), width=line)
            x, y = min(p[0] for p in pts), min(p[1] for p in pts)
            draw.text((x + 2, max(0, y - 12)), f"{box.score:.2f}", fill=(255, 40, 40))
        stem = paths[res.source].stem
        page = f".p{res.page}" if res.page is not None else ""
        if single:
            dest = out if len(results) == 1 else out.with_name(f"{out.stem}{page}{out.suffix}")
        else:
            dest = out / f"{stem}{page}.boxes.png"
        img.save(dest)
        written.append(dest)
    return written


def cmd_finetune(client: DetBoothClient, args: argparse.Namespace) -> int:
    if args.prior_preservation is False and (args.class_images is not None or args.class_steps is not None):
        raise UsageError(
            "--class-images and --class-steps need prior preservation (drop --no-prior-preservation)",
            "finetune",
        )
    folder = Path(args.images)
    if not folder.is_dir():
        raise UsageError(f"--images must be a folder of 3–20 images: {folder} is not a folder", "finetune")
    images, skipped = images_in(folder)
    if skipped:
        names = ", ".join(p.name for p in skipped)
        print(f"detbooth: skipping {len(skipped)} file{'s' if len(skipped) > 1 else ''} of {folder} that "
              f"{'are' if len(skipped) > 1 else 'is'} not an image ({', '.join(sorted(IMAGE_SUFFIXES))}): "
              f"{names}", file=sys.stderr)
    if not images:
        raise UsageError(f"no images (png, jpg, webp, ...) in {folder}", "finetune")
    config: dict[str, Any] = {"instance_prompt": args.instance_prompt}
    optional = {
        "class_prompt": args.class_prompt,
        "method": args.method,
        "max_train_steps": args.steps,
        "resolution": args.resolution,
        "base_model": args.base_model,
        "with_prior_preservation": args.prior_preservation,
    }
    config.update({k: v for k, v in optional.items() if v is not None})
    if args.prior_preservation is not False:  # the class images are generated by the base model first
        config["num_class_images"] = (
            args.class_images if args.class_images is not None else DEFAULT_CLASS_IMAGES
        )
        if args.class_steps is not None:
            config["class_images_inference_steps"] = args.class_steps
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--set takes KEY=VALUE, got {item!r}", "finetune")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
    job = client.finetune(images, config, idempotency_key=args.idempotency_key)
    print(f"job {job.id} {job.status} ({len(images)} images)", file=sys.stderr)
    if not args.watch:
        print(job.id)
        return 0
    job = ensure_succeeded(follow(client, job.id, ProgressBar(sys.stderr)))
    print(_result_json(job))
    print(f"model id: {job.id}  (use: detbooth generate PROMPT --model {job.id})", file=sys.stderr)
    return 0


def images_in(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) of a folder, by name; hidden files and sub-folders are left out of both."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return ([p for p in files if p.suffix.lower() in IMAGE_SUFFIXES],
            [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES])


def cmd_generate(client: DetBoothClient, args: argparse.Namespace) -> int:
    params = {
        "model": args.model,
        "negative_prompt": args.negative_prompt,
        "guidance_scale": args.guidance,
        "num_inference_steps": args.steps,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "num_images": args.num_images,
    }
    job = client.generate(args.prompt, **params)
    print(f"job {job.id} {job.status}", file=sys.stderr)
    job = ensure_succeeded(follow(client, job.id, None))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    result = job.result
    if not isinstance(result, GenerateResultView):
        raise SystemExit(f"job {job.id} is not a generation")
    for i, image in enumerate(result.images):
        dest = client.download(image.url, out / f"{job.id}-{i}.png")
        print(f"{dest}\tseed {image.seed}")
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)
    return 0


def _result_json(job: JobView) -> str:
    return json.dumps(None if job.result is None else job.result.model_dump(mode="json"), indent=2)


def _job_line(job: JobView) -> str:
    p = job.progress
    progress = f"{p.step}/{p.total}" if p.total else ""
    if job.status == "running" and p.phase and p.phase != "training" and p.phase in p.phases:
        now = p.phases[p.phase]  # e.g. `class_images 37/100` while those are made
        progress = f"{p.phase} {now.step}/{now.total}"
    err = job.error.code if job.error else ""
    created = job.model_dump(mode="json", include={"created_at"})["created_at"]  # as the API wrote it
    return "\t".join([job.id, job.type, job.status, created, progress, err]).rstrip()


def cmd_jobs(client: DetBoothClient, args: argparse.Namespace) -> int:
    if args.action == "list":
        page = client.jobs(limit=args.limit, type=args.type)
        if args.json:
            print(json.dumps(page.model_dump(mode="json"), indent=2))
        else:
            for job in page.jobs:
                print(_job_line(job))
            if page.next_cursor:
                print(f"(more: --limit {args.limit * 2})", file=sys.stderr)
        return 0
    if not args.id:
        raise UsageError(f"jobs {args.action} needs a job id", "jobs")
    if args.action == "delete":
        client.delete_job(args.id)
        print(f"deleted job {args.id}")
        return 0
    if args.action == "watch":
        job = ensure_succeeded(follow(client, args.id, ProgressBar(sys.stderr)))
        print(_result_json(job))
        return 0
    if args.action == "cancel":
        return cancel(client, args.id, as_json=args.json, wait=args.wait)
    print(json.dumps(client.job(args.id).model_dump(mode="json"), indent=2))
    return 0


def cancel(client: DetBoothClient, job_id: str, *, as_json: bool, wait: bool) -> int:
    """A queued job is canceled at once; a running one is asked to stop at its next step: say so, then wait
    for (and print) how it ended."""
    job = client.cancel(job_id)
    if not job.status.terminal:
        progress = _job_line(job).split("\t")[4:5]
        at = f" at {progress[0]}" if progress and progress[0] else ""
        print(f"job {job_id}: cancel requested ({job.status}{at}); "
              + ("waiting for it to stop" if wait else "it stops at its next step"), file=sys.stderr)
        if wait:
            job = client.wait(job_id)
    print(json.dumps(job.model_dump(mode="json"), indent=2) if as_json else _job_line(job))
    return 0


def cmd_models(client: DetBoothClient, args: argparse.Namespace) -> int:
    if args.action == "delete":
        if not args.id:
            raise UsageError("models delete needs a model id", "models")
        client.delete_model(args.id)
        print(f"deleted model {args.id}")
        return 0
    catalog = client.catalog()
    for m in catalog.models:
        print("\t".join([m.id, m.kind, m.instance_prompt or m.base_model or ""]))
    for d in catalog.detection.models if catalog.detection else []:
        notes = [d.precision or "not loaded", *(["default"] if d.default else []),
                 *([d.display_name] if d.fallback else [])]
        print("\t".join([d.id, "detection", ", ".join(notes)]))
    return 0


def cmd_whoami(client: DetBoothClient, args: argparse.Namespace) -> int:
    print(json.dumps(client.whoami().model_dump(mode="json"), indent=2))
    return 0


# ---------------------------------------------------------------- parser


class Parser(argparse.ArgumentParser):
    """Usage errors as one line too (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="detbooth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--url",
        default=os.environ.get("DETBOOTH_URL", "http://127.0.0.1:8000"),
        help="gateway URL (default: $DETBOOTH_URL or http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--api-key", default=os.environ.get("DETBOOTH_API_KEY"), help="API key (default: $DETBOOTH_API_KEY)"
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for an answer (default 120)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("detect", help="find text boxes in images, PDFs and TIFFs (a result per page)")
    d.add_argument("images", nargs="+", metavar="FILE")
    d.add_argument(
        "--draw",
        metavar="OUT",
        help="save each image with its boxes drawn: a .png/.jpg file for one image, else a folder "
        "(IMG.boxes.png in it)",
    )
    d.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    d.add_argument("--thresh", type=float, help="binarisation threshold of the probability map")
    d.add_argument("--box-thresh", type=float, help="minimum mean score of a box")
    d.add_argument("--unclip-ratio", type=float, help="how far boxes are grown")
    d.add_argument("--limit-side-len", type=int, help="resize target side")
    d.add_argument("--box-type", choices=["quad", "poly"])
    d.add_argument("--pages", metavar="SPEC", help="pages of each PDF/TIFF, e.g. 1-3,5 or 2- (default: all)")
    d.add_argument("--dpi", type=int, help="resolution PDF pages are rendered at (default 144)")
    d.add_argument("--model", help="one of the deployment's detection models (see `detbooth models`)")
    d.set_defaults(func=cmd_detect)

    f = sub.add_parser("finetune", help="start a DreamBooth fine-tune on 3–20 images of a subject")
    f.add_argument("--images", required=True, metavar="DIR", help="folder with 3–20 images of the subject")
    f.add_argument(
        "--instance-prompt", required=True, help='with a rare identifier, e.g. "a photo of sks dog"'
    )
    f.add_argument(
        "--class-prompt",
        help='what the subject is, e.g. "a photo of a dog": needed for prior preservation (the default)',
    )
    f.add_argument("--method", choices=["lora", "full"])
    f.add_argument("--steps", type=int, help="training steps (max_train_steps)")
    f.add_argument("--resolution", type=int)
    f.add_argument("--base-model", help="base model (default: the service's)")
    f.add_argument(
        "--prior-preservation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="class-prior preservation loss (default: on)",
    )
    f.add_argument(
        "--class-images",
        type=int,
        metavar="N",
        help="class images for prior preservation, generated by the base model first and reused by later "
        f"jobs (default {DEFAULT_CLASS_IMAGES})",
    )
    f.add_argument(
        "--class-steps",
        type=int,
        metavar="N",
        help="denoising steps per class image (default: the service's, 50)",
    )
    f.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other config field (JSON value)")
    f.add_argument("--idempotency-key", help="a retried command with the same key returns the same job")
    f.add_argument("--watch", action="store_true", help="follow the job with a progress bar until it ends")
    f.set_defaults(func=cmd_finetune)

    g = sub.add_parser("generate", help="generate images from the base model or a fine-tune")
    g.add_argument("prompt")
    g.add_argument("--model", help="`base` or the id of a fine-tune job that succeeded")
    g.add_argument("--negative-prompt")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (e.g. 7.5)")
    g.add_argument("--steps", type=int, help="inference steps")
    g.add_argument("--seed", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("-n", "--num-images", type=int)
    g.add_argument("-o", "--output", default=".", metavar="DIR", help="where to save the images (default .)")
    g.set_defaults(func=cmd_generate)

    j = sub.add_parser("jobs", help="list, show, watch (progress bar until it ends), cancel or delete your jobs")
    j.add_argument("action", choices=["list", "show", "watch", "cancel", "delete"])
    j.add_argument("id", nargs="?")
    j.add_argument("--type", choices=["finetune", "generate"])
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--json", action="store_true")
    j.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="cancel: return once the cancel is requested instead of waiting for a running job to stop",
    )
    j.set_defaults(func=cmd_jobs)

    m = sub.add_parser("models", help="list the base model, your fine-tunes and the detection models, or delete a "
                                      "fine-tune")
    m.add_argument("action", nargs="?", choices=["list", "delete"], default="list")
    m.add_argument("id", nargs="?")
    m.set_defaults(func=cmd_models)

    w = sub.add_parser("whoami", help="your owner id, limits and storage use")
    w.set_defaults(func=cmd_whoami)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with DetBoothClient(args.url, args.api_key, timeout=args.timeout) as client:
            code = args.func(client, args)
        sys.stdout.flush()  # here, so a closed pipe is met inside the try
        return code
    except BrokenPipeError:
        return closed_pipe()
    except UsageError as e:
        prog = f"detbooth {e.command}" if e.command else "detbooth"
        print(f"{prog}: error: {' '.join(str(e).split())} (see {prog} --help)", file=sys.stderr)
        return 2
    except (ApiError, CliError, OSError) as e:
        print("detbooth: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("detbooth: interrupted", file=sys.stderr)
        return 130


def closed_pipe() -> int:
    """The reader of stdout went away (`detbooth jobs list | head`): stop quietly, as `cat` would. stdout
    now points at /dev/null, so the interpreter's own flush at exit has nowhere to fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


if __name__ == "__main__":
    sys.exit(main())
