"""The web console at /ui in a real headless chromium against the real stack: each tab's main path, errors
shown to the user, screenshots under test-artifacts/ui/."""

import json
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis

from gateway.auth import hash_key, owner_of
from services.contracts.jobs import JobStatus, JobType, Phase, PhaseProgress, Progress
from services.jobs.redis_system import RedisJobSystem
from tests.cli.stack import subject_images, text_image
from tests.document_support import vector_pdf
from tests.ui.conftest import login, shot

ALICE = {"Authorization": "Bearer key-alice"}


def real_errors(page) -> list[str]:
    """Console errors other than the browser's own note on an HTTP error answer the test asked for."""
    return [e for e in page.console_errors if "Failed to load resource" not in e]


def test_console_is_served_with_a_self_only_csp(stack):
    r = httpx.get(f"{stack.url}/ui", follow_redirects=True)
    assert r.status_code == 200 and "<title>DetBooth console</title>" in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "http" not in csp and "unsafe" not in csp
    for asset in ("app.js", "style.css"):
        assert httpx.get(f"{stack.url}/ui/{asset}").status_code == 200
    assert httpx.get(f"{stack.url}/ui/nope.js").status_code == 404


def test_key_is_asked_once_per_session_and_a_wrong_key_is_refused(page, stack):
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{stack.url}/ui/")
    assert page.is_visible("#key-dialog")
    page.fill("#key-input", "wrong-key")
    page.click("#key-submit")
    page.wait_for_selector("#key-error:not([hidden])")
    assert "the API key is not valid" in page.inner_text("#key-error")
    shot(page, "key-refused")
    page.fill("#key-input", "key-alice")
    page.click("#key-submit")
    page.wait_for_selector("#key-dialog", state="hidden")
    assert page.inner_text("#key-status") == "key …lice"
    page.reload()  # same browser session: not asked again
    page.wait_for_selector("#key-status:text('key …lice')")
    assert not page.is_visible("#key-dialog")
    origin = urlparse(stack.url).netloc
    assert requests and all(urlparse(u).netloc == origin for u in requests), requests  # nothing external
    assert real_errors(page) == []


def test_detect_draws_boxes_updates_on_threshold_change_and_downloads_json(page, stack, tmp_path):
    login(page, stack, tab="detect")
    page.set_input_files(
        "#detect-files",
        [
            str(text_image(tmp_path / "page.png")),
            str(text_image(tmp_path / "sign.png", lines=("OPEN 24 HOURS",))),
        ],
    )
    page.wait_for_selector(".det-card >> nth=1")
    counts = [int(c) for c in page.eval_on_selector_all(".det-canvas", "cs => cs.map(c => c.dataset.boxes)")]
    assert len(counts) == 2 and all(n > 0 for n in counts), counts
    assert page.is_hidden("#detect-error")
    shot(page, "detect-boxes")

    with page.expect_response(lambda r: r.url.endswith("/detect") and r.request.method == "POST") as resp:
        page.eval_on_selector(
            "#det-box-thresh", "e => { e.value = '0.95'; e.dispatchEvent(new Event('change')); }"
        )
    assert resp.value.ok
    page.wait_for_selector("#detect-status:has-text(' ms')")
    after = [int(c) for c in page.eval_on_selector_all(".det-canvas", "cs => cs.map(c => c.dataset.boxes)")]
    assert all(a <= b for a, b in zip(after, counts)), (
        after,
        counts,
    )  # a stricter box threshold: fewer boxes

    with page.expect_download() as dl:
        page.click("#detect-download")
    body = json.loads(Path(dl.value.path()).read_text())
    assert body["params"]["box_thresh"] == "0.95" and len(body["results"]) == 2 and body["model"]

    page.set_input_files(
        "#detect-files", {"name": "notes.png", "mimeType": "image/png", "buffer": b"not a png"}
    )
    page.wait_for_selector("#detect-error:not([hidden])")
    assert page.inner_text("#detect-error")
    shot(page, "detect-bad-file")


def test_detect_shows_each_pdf_page_with_its_boxes(page, stack, tmp_path):
    pdf, truth = vector_pdf()
    (tmp_path / "doc.pdf").write_bytes(pdf)
    login(page, stack, tab="detect")
    page.wait_for_selector("#det-model option >> nth=1", state="attached")  # the deployment's one model
    assert page.eval_on_selector_all("#det-model option", "os => os.map(o => o.value)")[0] == ""
    page.fill("#det-pages", "2-3")
    page.set_input_files("#detect-files", [str(text_image(tmp_path / "photo.png")), str(tmp_path / "doc.pdf")])
    page.wait_for_selector(".det-card >> nth=2")
    cards = page.eval_on_selector_all(
        ".det-canvas", "cs => cs.map(c => [c.dataset.page, Number(c.dataset.boxes), c.width, c.height])")
    assert [c[0] for c in cards] == ["", "2", "3"], cards
    assert [c[1] for c in cards[1:]] == [len(truth[1]), len(truth[2])]
    assert cards[1][2:] == [840, 600]  # the page's own preview, drawn at its size
    captions = page.eval_on_selector_all(".det-card figcaption strong", "es => es.map(e => e.textContent)")
    assert captions == ["photo.png", "doc.pdf · page 2", "doc.pdf · page 3"]
    # the page is drawn, not a blank canvas: dark text pixels where the PDF put its first line
    left, top, right, bottom = (round(v * 2) for v in truth[1][0])
    dark = page.eval_on_selector(
        ".det-canvas >> nth=1",
        f"c => {{ const d = c.getContext('2d').getImageData({left}, {top}, {right - left}, {bottom - top}).data;"
        " let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 80 && d[i + 1] < 80) n++; return n; }")
    assert dark > 50, dark
    assert page.is_hidden("#detect-error") and real_errors(page) == []
    shot(page, "detect-pdf-pages")

    page.fill("#det-pages", "3-9")
    page.dispatch_event("#det-pages", "change")
    page.wait_for_selector("#detect-error:not([hidden])")
    assert "has 3 pages" in page.inner_text("#detect-error")


def test_finetune_needs_3_to_20_images_and_follows_the_job(page, stack, tmp_path):
    login(page, stack, tab="finetune")
    images = sorted(str(p) for p in subject_images(tmp_path / "dog").iterdir())
    page.set_input_files("#ft-files", images[:2])
    page.fill("#ft-instance", "a photo of sks dog")
    page.fill("#ft-class", "a photo of a dog")
    page.click("#ft-submit")
    assert "needs 3–20 images of the subject; 2 chosen" in page.inner_text("#ft-error")

    page.set_input_files("#ft-files", images[2:])
    page.wait_for_selector("#ft-thumbs canvas >> nth=2")
    page.fill("#ft-steps", "2")
    page.fill("#ft-resolution", "64")
    assert page.is_checked("#ft-prior")  # prior preservation stays on, with few, cheap class images
    assert page.input_value("#ft-class-images") == "50" and page.input_value("#ft-class-steps") == "50"
    page.uncheck("#ft-prior")
    assert page.is_disabled("#ft-class-images") and page.is_disabled("#ft-class-steps")
    page.check("#ft-prior")
    page.fill("#ft-class-images", "2")
    page.fill("#ft-class-steps", "2")
    page.click("#ft-submit")
    page.wait_for_selector("#ft-progress-box:not([hidden])")
    job_id = page.inner_text("#ft-job").removeprefix("job ")
    page.wait_for_selector("#ft-state.succeeded, #ft-state.failed, #ft-state.canceled", timeout=120_000)
    job = httpx.get(f"{stack.url}/jobs/{job_id}", headers=ALICE).json()
    config = job["spec"]["config"]
    assert config["max_train_steps"] == 2 and config["method"] == "lora" and config["resolution"] == 64
    assert config["with_prior_preservation"] is True
    assert config["num_class_images"] == 2 and config["class_images_inference_steps"] == 2
    assert page.get_attribute("#ft-state", "class") == "badge succeeded", page.inner_text("#ft-error")
    assert page.eval_on_selector("#ft-progress", "p => p.value === p.max && p.max > 0")
    assert page.is_hidden("#ft-cancel")
    shot(page, "finetune-finished")
    assert real_errors(page) == []


def test_finetune_progress_bar_loss_chart_and_cancel(page, stack):
    """This test plays the worker through the job store, so progress arrives step by step at its own pace."""
    store = RedisJobSystem(
        redis.Redis.from_url(stack.env["DETBOOTH_REDIS_URL"]), prefix=stack.env["DETBOOTH_KEY_PREFIX"]
    )
    config = {
        "instance_prompt": "a photo of sks dog",
        "class_prompt": "a photo of a dog",
        "max_train_steps": 10,
    }
    job, _ = store.create(
        JobType.finetune, owner_of(hash_key("key-alice")), {"config": config}
    )  # never queued
    store.transition(job.id, JobStatus.running, expected={JobStatus.queued})
    login(page, stack, tab="jobs")
    page.click(f"tr[data-job='{job.id}'] a.watch")
    page.wait_for_selector("#ft-state.running")
    phases = {Phase.preparing: PhaseProgress(step=2, total=2, eta_s=0)}
    store.report_progress(job.id, Progress(total=10, phase=Phase.preparing, phases=phases))
    page.wait_for_selector("#ft-progress-text:has-text('preparing · 2 / 2 · eta 0 s')")
    phases[Phase.class_images] = PhaseProgress(step=2, total=4, eta_s=1.2, it_per_s=2.0)
    store.report_progress(job.id, Progress(total=10, phase=Phase.class_images, phases=phases))
    page.wait_for_selector("#ft-progress-text:has-text('class images · 2 / 4 · 2.00 images/s · eta 1 s')")
    assert page.eval_on_selector("#ft-progress", "p => [p.value, p.max]") == [2, 4]
    shot(page, "finetune-class-images")
    phases[Phase.class_images] = PhaseProgress(step=4, total=4, eta_s=0, it_per_s=2.0)
    for step in range(1, 7):
        phases[Phase.training] = PhaseProgress(step=step, total=10, eta_s=2.0 * (10 - step), it_per_s=3.0)
        store.report_progress(
            job.id,
            Progress(step=step, total=10, eta_s=2.0 * (10 - step), phase=Phase.training, phases=phases),
            {"loss": 0.5 / step + 0.05, "it_per_s": 3.0},
        )
    page.wait_for_selector(
        "#ft-progress-text:has-text('training · step 6 / 10 · loss 0.1333 · 3.00 it/s · eta 8 s')"
    )
    assert page.eval_on_selector("#ft-progress", "p => [p.value, p.max]") == [6, 10]
    assert page.evaluate("ft.losses.length") == 6
    shot(page, "finetune-progress")

    page.click("#ft-cancel")
    page.wait_for_selector("#ft-progress-text:has-text('cancel requested')")
    assert store.get(job.id).cancel_requested
    store.transition(
        job.id, JobStatus.canceled, expected={JobStatus.running}
    )  # the worker stops at its next step
    page.wait_for_selector("#ft-state.canceled")
    assert page.is_hidden("#ft-cancel") and page.is_hidden("#ft-error")
    assert real_errors(page) == []


def test_generate_shows_errors_and_results(page, stack):
    login(page, stack, tab="generate")
    page.wait_for_selector("#gen-model option[value=base]", state="attached")
    page.fill("#gen-prompt", "   ")  # passes the form's `required`, not the gateway's validation
    page.click("#gen-submit")
    page.wait_for_selector("#gen-error:not([hidden])")
    assert "Invalid request (422): body.prompt: String should have at least 1 character" in page.inner_text(
        "#gen-error"
    )
    shot(page, "generate-invalid")

    page.fill("#gen-prompt", "a photo of sks dog on the moon")
    page.fill("#gen-width", "64")
    page.fill("#gen-height", "64")
    page.fill("#gen-steps", "2")
    page.fill("#gen-seed", "7")
    page.fill("#gen-count", "2")
    page.click("#gen-submit")
    page.wait_for_selector(".gen-card >> nth=1", timeout=120_000)
    assert page.is_hidden("#gen-error")
    seeds = page.eval_on_selector_all(".gen-card .seed", "s => s.map(x => x.textContent)")
    assert seeds[0] == "seed 7" and len(seeds) == 2
    with page.expect_download() as dl:
        page.click(".gen-card .download >> nth=0")
    assert dl.value.suggested_filename.endswith("-0.png")
    assert Path(dl.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shot(page, "generate-gallery")


def test_jobs_lists_own_jobs_with_status_details_and_cancel(page, stack):
    r = httpx.post(
        f"{stack.url}/generate",
        headers=ALICE,
        json={"prompt": "jobs tab", "num_inference_steps": 1, "width": 64, "height": 64},
    )
    job_id = r.json()["id"]
    login(page, stack, tab="jobs")
    row = f"tr[data-job='{job_id}']"
    page.wait_for_selector(row)
    assert page.inner_text(f"{row} td:nth-child(2)") == "generate"
    page.click(f"{row} td:first-child button")
    page.wait_for_selector("#job-detail:not([hidden])")
    assert json.loads(page.inner_text("#job-detail"))["id"] == job_id
    page.wait_for_timeout(500)
    page.click("#jobs-refresh")
    page.wait_for_selector(f"{row} .badge:text-matches('succeeded|failed|canceled')", timeout=60_000)
    shot(page, "jobs")

    # a job that ended cannot be canceled: the gateway's 409 is shown
    page.evaluate(f"cancelJob('{job_id}')")
    page.wait_for_selector("#jobs-error:not([hidden])")
    assert "Job already finished (409)" in page.inner_text("#jobs-error")

    page.click("#change-key")  # another key sees none of alice's jobs
    page.fill("#key-input", "key-bob")
    page.click("#key-submit")
    page.wait_for_selector("#key-dialog", state="hidden")
    page.click("#jobs-refresh")
    page.wait_for_selector("#jobs-status:text('no jobs yet')")
    assert page.query_selector(row) is None


def test_jobs_and_models_can_be_deleted(page, stack):
    r = httpx.post(f"{stack.url}/generate", headers=ALICE,
                   json={"prompt": "to delete", "num_inference_steps": 1, "width": 64, "height": 64})
    job_id = r.json()["id"]
    store = RedisJobSystem(redis.Redis.from_url(stack.env["DETBOOTH_REDIS_URL"]),
                           prefix=stack.env["DETBOOTH_KEY_PREFIX"])
    model_id = "d" * 32
    store.register_model(owner_of(hash_key("key-alice")), model_id, {"method": "lora", "instance_prompt": "sks"})
    page.on("dialog", lambda d: d.accept())  # the confirm() before each deletion
    login(page, stack, tab="jobs")
    row = f"tr[data-job='{job_id}']"
    page.wait_for_selector(row)
    page.click(f"{row} button[data-action='delete']")
    page.wait_for_selector(row, state="detached")
    assert httpx.get(f"{stack.url}/jobs/{job_id}", headers=ALICE).status_code == 404

    page.click("a[data-tab='generate']")
    page.wait_for_selector(f"#gen-model option[value='{model_id}']", state="attached")
    page.select_option("#gen-model", model_id)
    page.click("#gen-model-delete")
    page.wait_for_selector(f"#gen-model option[value='{model_id}']", state="detached")
    assert page.input_value("#gen-model") == "base" and page.is_disabled("#gen-model-delete")
    assert model_id not in [m["id"] for m in httpx.get(f"{stack.url}/models", headers=ALICE).json()["models"]]
    assert real_errors(page) == []
