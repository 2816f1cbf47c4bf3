"""The `detbooth` command against the real stack (gateway over uvicorn, Redis, a Celery worker)."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import redis
from PIL import Image

from detbooth_client import DetBoothClient
from detbooth_client.cli import main
from gateway.auth import hash_key, owner_of
from services.contracts.detect import Box, DetectResponse
from services.contracts.finetune import FinetuneResult
from services.contracts.jobs import JobStatus, JobType, Phase, PhaseProgress, Progress
from services.jobs.redis_system import RedisJobSystem
from tests.cli.stack import subject_images, text_image
from tests.document_support import vector_pdf
from tests.procs import ROOT


@pytest.fixture
def run(stack, capsys):
    """`detbooth ARGS` in-process as alice: (exit code, stdout, stderr)."""

    def _run(*args, key="key-alice", url=None):
        argv = ["--url", url or stack.url, *(["--api-key", key] if key else []), *args]
        code = main(argv)
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detbooth: error: "), err
    return lines[0]


def usage_error(code: int, err: str, command: str) -> str:
    """Bad usage: one line naming the command and its --help, exit 2 (as argparse's own usage errors)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"detbooth {command}: error: "), err
    assert lines[0].endswith(f"(see detbooth {command} --help)"), err
    return lines[0]


def test_missing_or_wrong_key_is_one_line(run):
    assert "Unauthorized (401)" in one_line_error(*run("jobs", "list", key=None)[::2])
    assert "not valid" in one_line_error(*run("jobs", "list", key="nope")[::2])


def test_unreachable_gateway_is_one_line(run):
    line = one_line_error(*run("jobs", "list", url="http://127.0.0.1:9")[::2])
    assert "Cannot reach the gateway" in line and "127.0.0.1:9" in line


def test_url_and_key_from_environment_via_entry_point(stack):
    env = {**os.environ, "DETBOOTH_URL": stack.url, "DETBOOTH_API_KEY": "key-bob"}
    r = subprocess.run(
        [sys.executable, "-m", "detbooth_client", "models"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("base\tbase\t")
    r = subprocess.run(
        [sys.executable, "-m", "detbooth_client", "jobs", "list"],
        env={**env, "DETBOOTH_API_KEY": ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "401" in r.stderr


def test_usage_errors_exit_2(run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    usage = "the following arguments are required: prompt (see detbooth generate --help)"
    assert err == f"detbooth generate: error: {usage}\n"
    code, _, err = run(
        "finetune", "--images", "/nonexistent", "--instance-prompt", "a", "--class-prompt", "b"
    )
    assert "not a folder" in usage_error(code, err, "finetune")
    assert "needs a job id" in usage_error(*run("jobs", "show")[::2], "jobs")
    assert "no such file: /nonexistent.png" in usage_error(*run("detect", "/nonexistent.png")[::2], "detect")
    code, _, err = run(
        "finetune",
        "--images",
        str(ROOT / "tests"),
        "--instance-prompt",
        "a",
        "--class-prompt",
        "b",
        "--no-prior-preservation",
        "--class-images",
        "2",
    )
    assert "--class-images and --class-steps need prior preservation" in usage_error(code, err, "finetune")


def test_usage_errors_exit_2_as_a_process_too(stack):
    """What a shell script sees: status 2 and one line on stderr, nothing on stdout."""
    r = subprocess.run([sys.executable, "-m", "detbooth_client", "--url", stack.url, "jobs", "cancel"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r


def test_a_closed_pipe_exits_quietly(stack):
    """`detbooth jobs list | head`: the reader goes away before the CLI writes; no error, no traceback."""
    store = RedisJobSystem(
        redis.Redis.from_url(stack.env["DETBOOTH_REDIS_URL"]), prefix=stack.env["DETBOOTH_KEY_PREFIX"]
    )
    for _ in range(3):  # never queued: only listed
        store.create(JobType.generate, owner_of(hash_key("key-bob")), {"params": {}})
    proc = subprocess.Popen([sys.executable, "-m", "detbooth_client", "--url", stack.url, "--api-key", "key-bob",
                             "jobs", "list"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0 and err == "", err


def test_finetune_too_few_images_is_the_gateways_message_and_names_the_files_it_skipped(run, tmp_path):
    folder = subject_images(tmp_path / "two", n=2)
    (folder / "doc.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0")
    code, _, err = run(
        "finetune",
        "--images",
        str(folder),
        "--instance-prompt",
        "a photo of sks dog",
        "--class-prompt",
        "a photo of a dog",
    )
    assert code == 1, err
    skipped, error = err.strip().splitlines()
    assert skipped.startswith(f"detbooth: skipping 2 files of {folder} that are not an image (")
    assert skipped.endswith("): doc.pdf, notes.txt"), skipped
    assert "Wrong number of images (422): send 3–20 images" in one_line_error(code, error)


def test_finetune_then_jobs_list_show_cancel(run, tmp_path):
    folder = subject_images(tmp_path / "dog")
    code, out, err = run(
        "finetune",
        "--images",
        str(folder),
        "--instance-prompt",
        "a photo of sks dog",
        "--class-prompt",
        "a photo of a dog",
        "--method",
        "lora",
        "--steps",
        "500",
        "--resolution",
        "64",
        "--no-prior-preservation",
    )
    assert code == 0, err
    job_id = out.strip()
    assert f"job {job_id} queued (3 images)" in err

    code, out, _ = run("jobs", "list", "--type", "finetune")
    assert code == 0 and out.splitlines()[0].split("\t")[:2] == [job_id, "finetune"]
    code, out, _ = run("jobs", "show", job_id)
    shown = json.loads(out)
    assert shown["id"] == job_id and shown["spec"]["config"]["max_train_steps"] == 500
    assert shown["spec"]["config"]["method"] == "lora"

    code, out, err = run("jobs", "cancel", job_id)
    if code == 0:  # still queued or running: canceled now, or cooperatively at its next step
        assert out.split("\t")[:3] == [job_id, "finetune", "canceled"], (out, err)
    else:  # it had already ended
        assert "Job already finished (409)" in one_line_error(code, err)
    assert "Job not found (404)" in one_line_error(*run("jobs", "show", job_id, key="key-bob")[::2])


def test_class_prompt_is_optional_without_prior_preservation(run, tmp_path):
    folder = subject_images(tmp_path / "mug")
    args = ["finetune", "--images", str(folder), "--instance-prompt", "a photo of sks mug", "--steps", "1",
            "--resolution", "64"]
    code, out, err = run(*args, "--no-prior-preservation")
    assert code == 0, err
    config = json.loads(run("jobs", "show", out.strip())[1])["spec"]["config"]
    assert config["with_prior_preservation"] is False and config.get("class_prompt") is None
    # with prior preservation (the default) the gateway says what is missing
    assert "class_prompt is required" in one_line_error(*run(*args)[::2])


def test_cancel_of_a_running_job_says_cancel_requested_then_the_final_status(run, tmp_path):
    folder = subject_images(tmp_path / "cup")
    code, out, err = run("finetune", "--images", str(folder), "--instance-prompt", "a photo of sks cup",
                         "--steps", "5000", "--resolution", "64", "--no-prior-preservation",
                         "--set", "checkpoint_every=5000")
    assert code == 0, err
    job_id = out.strip()
    deadline = time.monotonic() + 300
    while json.loads(run("jobs", "show", job_id)[1])["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    code, out, err = run("jobs", "cancel", job_id)
    assert code == 0, err
    assert err.startswith(f"job {job_id}: cancel requested (running"), err
    assert "waiting for it to stop" in err
    assert out.strip().split("\t")[:3] == [job_id, "finetune", "canceled"], out


def test_finetune_watch_with_prior_preservation_then_generate_with_the_model(run, tmp_path):
    folder = subject_images(tmp_path / "cat")
    code, out, err = run(
        "finetune",
        "--images",
        str(folder),
        "--instance-prompt",
        "a photo of sks cat",
        "--class-prompt",
        "a photo of a cat",
        "--steps",
        "2",
        "--resolution",
        "64",
        "--class-images",
        "2",
        "--class-steps",
        "2",
        "--watch",
    )
    assert code == 0, err
    assert "status: succeeded" in err and "[" + "#" * 30 + "] 2/2" in err
    job_id = err.strip().splitlines()[-1].split("model id: ")[1].split()[0]
    result = json.loads(out)
    assert result["model_id"] == job_id and result["steps"] == 2
    assert "loss_prior" in result["metrics"]  # trained on the class images too
    config = json.loads(run("jobs", "show", job_id)[1])["spec"]["config"]
    assert config["num_class_images"] == 2 and config["class_images_inference_steps"] == 2
    assert config.get("with_prior_preservation", True) is True

    code, out, err = run(
        "generate",
        "a photo of sks cat",
        "--model",
        job_id,
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "-o",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    path, seed = out.strip().split("\t")
    assert seed.startswith("seed ")
    with Image.open(path) as img:
        assert img.size == (64, 64)


def test_generate_unknown_model_is_one_line(run, tmp_path):
    code, _, err = run("generate", "a photo of sks dog", "--model", "nope", "-o", str(tmp_path))
    assert "Unknown model (404): model `nope` is neither `base`" in one_line_error(code, err)


def test_generate_saves_images_with_their_seeds(run, tmp_path):
    code, out, err = run(
        "generate",
        "a photo of sks dog",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--seed",
        "42",
        "-n",
        "2",
        "--guidance",
        "5",
        "-o",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert len(rows) == 2 and rows[0][1] == "seed 42"
    for path, _ in rows:
        with Image.open(path) as img:
            assert img.size == (64, 64)


def test_detect_prints_boxes_draws_them_and_json(run, tmp_path):
    img = text_image(tmp_path / "page.png")
    code, out, err = run("detect", str(img), "--box-thresh", "0.5", "--draw", str(tmp_path / "drawn"))
    assert code == 0, err
    assert out.startswith("model: ") and "page.png: 480x200," in out
    assert (tmp_path / "drawn" / "page.boxes.png").is_file()
    code, out, _ = run("detect", str(img), str(img), "--json")
    body = json.loads(out)
    assert len(body["results"]) == 2 and body["results"][0]["boxes"]
    assert body["results"][0]["boxes"][0]["score"] > 0
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    code, _, err = run("detect", str(bad))
    assert "notes.txt" in one_line_error(code, err)


def test_the_client_returns_typed_boxes(stack, tmp_path):
    with DetBoothClient(stack.url, "key-alice") as client:
        body = client.detect([text_image(tmp_path / "page.png")])
    assert isinstance(body, DetectResponse)
    [result] = body.results
    assert (result.width, result.height) == (480, 200) and result.boxes
    assert all(isinstance(box, Box) and all(isinstance(v, int) for point in box.points for v in point)
               for box in result.boxes)


def test_draw_with_a_file_name_takes_one_image_only(run, tmp_path):
    img = text_image(tmp_path / "page.png")
    code, _, err = run("detect", str(img), str(img), "--draw", str(tmp_path / "two.png"))
    assert "give a folder for several" in usage_error(code, err, "detect")
    assert not (tmp_path / "two.png").exists()
    code, _, err = run("detect", str(img), "--draw", str(tmp_path / "one.png"))
    assert code == 0, err
    with Image.open(tmp_path / "one.png") as drawn:
        assert drawn.size == (480, 200)
    # one document of several pages: numbered files beside the name given, never a folder of that name
    (tmp_path / "doc.pdf").write_bytes(vector_pdf()[0])
    code, _, err = run("detect", str(tmp_path / "doc.pdf"), "--pages", "1-2", "--draw", str(tmp_path / "pages.png"))
    assert code == 0, err
    assert not (tmp_path / "pages.png").exists()
    assert (tmp_path / "pages.p1.png").is_file() and (tmp_path / "pages.p2.png").is_file()


def test_draw_applies_the_exif_orientation_as_the_api_does(run, tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 (rotate 90° clockwise to view): the API detects
    on the upright image, so the boxes must be drawn on the upright image too."""
    upright = text_image(tmp_path / "upright.png")
    with Image.open(upright) as im:
        stored = im.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: 200x480
        exif = Image.Exif()
        exif[0x0112] = 6
        stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    code, out, err = run("detect", str(tmp_path / "phone.jpg"), "--json", "--draw", str(tmp_path / "drawn.png"))
    assert code == 0, err
    result = json.loads(out)["results"][0]
    assert (result["width"], result["height"]) == (480, 200) and result["boxes"]
    with Image.open(tmp_path / "drawn.png") as drawn:
        assert drawn.size == (480, 200)  # the boxes' frame, not the stored 200x480 pixels


def test_detect_a_pdf_with_pages_draws_each_page(run, tmp_path):
    pdf, truth = vector_pdf()
    doc = tmp_path / "doc.pdf"
    doc.write_bytes(pdf)
    code, out, err = run("detect", str(doc), "--pages", "1-2", "--draw", str(tmp_path / "out"))
    assert code == 0, err
    assert f"{doc} page 1: 840x600, {len(truth[0])} boxes" in out and f"{doc} page 2: 840x600" in out
    assert "page 3" not in out
    for number in (1, 2):
        with Image.open(tmp_path / "out" / f"doc.p{number}.boxes.png") as drawn:
            assert drawn.size == (840, 600)
            rgb = np.asarray(drawn.convert("RGB")).astype(int)
        green = (rgb[:, :, 1] > 150) & (rgb[:, :, 0] < 60) & (rgb[:, :, 2] < 140)  # the drawn box lines
        dark = rgb.sum(axis=2) < 150  # the page's own text
        assert green.sum() > 500 and dark.sum() > 500
    assert not (tmp_path / "out" / "doc.p3.boxes.png").exists()

    code, out, _ = run("models")
    [detection] = [line.split("\t") for line in out.splitlines() if "\tdetection\t" in line]
    assert "default" in detection[2] and "fp32" in detection[2]  # the stack serves exact fp32
    code, _, err = run("detect", str(doc), "--model", "no-such-model")
    assert "available: " in one_line_error(code, err)
    code, out, _ = run("detect", str(doc), "--pages", "3", "--dpi", "72", "--json")
    assert code == 0 and [(r["page"], r["width"]) for r in json.loads(out)["results"]] == [(3, 420)]
    code, _, err = run("detect", str(doc), "--pages", "2-9")
    assert "has 3 pages" in one_line_error(code, err)


def _lora_result(job_id: str, steps: int) -> dict:
    """A fine-tune's result as the worker records it."""
    return FinetuneResult(model_id=job_id, model=f"jobs/{job_id}/model/pytorch_lora_weights.safetensors",
                          method="lora", config=f"jobs/{job_id}/config.yaml", logs=f"jobs/{job_id}/logs",
                          steps=steps).model_dump()


def test_jobs_watch_draws_progress_until_the_job_ends(run, stack):
    """This test plays the worker through the job store, so the progress events are known."""
    store = RedisJobSystem(
        redis.Redis.from_url(stack.env["DETBOOTH_REDIS_URL"]), prefix=stack.env["DETBOOTH_KEY_PREFIX"]
    )
    job, _ = store.create(JobType.finetune, owner_of(hash_key("key-alice")), {"config": {}})  # never queued
    store.transition(job.id, JobStatus.running, expected={JobStatus.queued})

    def worker():
        for step in range(1, 5):
            store.report_progress(job.id, Progress(step=step, total=4, eta_s=4 - step),
                                  {"loss": 1.0 / step, "it_per_s": 2.5})
            time.sleep(0.6)  # slower than the pipe's line limit (4 a second): each step can get its line
        store.transition(
            job.id,
            JobStatus.succeeded,
            expected={JobStatus.running},
            result=_lora_result(job.id, steps=4),
        )

    thread = threading.Thread(target=worker)
    thread.start()
    code, out, err = run("jobs", "watch", job.id)
    thread.join()
    assert code == 0, err
    assert f"[{'#' * 30}] 4/4  loss 0.25  it/s 2.5  eta 0s" in err and "status: succeeded" in err
    steps = [line.split("] ")[1].split()[0] for line in err.splitlines() if line.startswith("[")]
    # stderr is a pipe here: a line per step change (events may arrive bunched, so one may be merged away)
    assert steps[0] == "1/4" and steps[-1] == "4/4" and len(steps) >= 3 and steps == sorted(set(steps)), err
    assert json.loads(out)["model_url"].endswith(f"/artifacts/jobs/{job.id}/model/pytorch_lora_weights.safetensors")


def test_watch_shows_each_phase_with_its_numbers_and_rate(run, stack):
    """A fine-tune's phases as the worker reports them (played through the job store): the bar names the
    phase and shows its own step, total, rate and ETA."""
    store = RedisJobSystem(
        redis.Redis.from_url(stack.env["DETBOOTH_REDIS_URL"]), prefix=stack.env["DETBOOTH_KEY_PREFIX"]
    )
    job, _ = store.create(JobType.finetune, owner_of(hash_key("key-alice")), {"config": {}})  # never queued
    store.transition(job.id, JobStatus.running, expected={JobStatus.queued})
    listed = {}

    def report(phase, step, total, eta=None, rate=None, metrics=None, phases={}):
        phases[phase] = PhaseProgress(step=step, total=total, eta_s=eta, it_per_s=rate)
        training = phases.get(Phase.training, PhaseProgress(total=3))
        store.report_progress(job.id, Progress(step=training.step, total=training.total, eta_s=training.eta_s,
                                               phase=phase, phases=phases), metrics)
        time.sleep(0.6)

    def worker():
        report(Phase.preparing, 0, 2)
        report(Phase.preparing, 2, 2, eta=0)
        report(Phase.class_images, 0, 4)
        report(Phase.class_images, 2, 4, eta=1, rate=2.0)
        listed["out"] = subprocess.run(  # what `jobs list` says meanwhile (a process: capsys is the watcher's)
            [sys.executable, "-m", "detbooth_client", "--url", stack.url, "--api-key", "key-alice", "jobs", "list"],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        ).stdout
        report(Phase.class_images, 4, 4, eta=0, rate=2.0)
        report(Phase.training, 0, 3)
        report(Phase.training, 3, 3, eta=0, rate=1.5, metrics={"loss": 0.5, "it_per_s": 1.5, "lr": 1e-4})
        report(Phase.exporting, 0, 1, metrics={"loss": 0.5, "it_per_s": 1.5, "lr": 1e-4})
        report(Phase.exporting, 1, 1, eta=0, metrics={"loss": 0.5, "it_per_s": 1.5, "lr": 1e-4})
        store.transition(job.id, JobStatus.succeeded, expected={JobStatus.running}, result=_lora_result(job.id, steps=3))

    thread = threading.Thread(target=worker)
    thread.start()
    code, out, err = run("jobs", "watch", job.id)
    thread.join()
    assert code == 0, err
    lines = err.splitlines()
    for expected in ("preparing [" + "#" * 30 + "] 2/2  eta 0s",
                     "class images [" + "#" * 15 + "-" * 15 + "] 2/4  images/s 2  eta 1s",
                     "class images [" + "#" * 30 + "] 4/4  images/s 2  eta 0s",
                     "training [" + "#" * 30 + "] 3/3  loss 0.5  it/s 1.5  lr 0.0001  eta 0s",
                     "exporting [" + "#" * 30 + "] 1/1  eta 0s"):
        assert expected in lines, err
    line = [row for row in listed["out"].splitlines() if row.startswith(job.id)][0]
    assert line.split("\t")[2:][::2] == ["running", "class_images 2/4"], line

