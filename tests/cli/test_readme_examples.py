"""The README's examples, run as written (curl, CLI, Python) against the real stack with the tiny model: each
finishes within its own waits, with the sizes and steps the README gives for `make run`."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from tests.cli.stack import subject_images, text_image
from tests.procs import ROOT

README = (ROOT / "README.md").read_text()
KEY = "key-bob"  # alice's fine-tunes belong to the other CLI tests


def block(lang: str, starts: str) -> str:
    """The README's fenced `lang` block whose first line starts with `starts`."""
    for body in re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S):
        if body.startswith(starts):
            return body
    raise AssertionError(f"no ```{lang} block starting with {starts!r} in README.md")


@pytest.fixture
def workdir(tmp_path, stack):
    """A folder with the README's input files, `data/api_key`, and `detbooth` on PATH."""
    text_image(tmp_path / "page.png").rename(tmp_path / "page.jpg")  # the name the README uses
    with Image.open(tmp_path / "page.jpg") as im:
        im.convert("RGB").save(tmp_path / "page.jpg", "JPEG", quality=95)
    text_image(tmp_path / "sign.png", lines=("EXIT", "no entry"))
    photos = subject_images(tmp_path / "photos", n=3, size=96)
    for i, png in enumerate(sorted(photos.iterdir()), start=1):
        with Image.open(png) as im:
            im.convert("RGB").save(tmp_path / f"dog{i}.jpg", "JPEG", quality=95)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "api_key").write_text(KEY + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "detbooth").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m detbooth_client "$@"\n')
    (bin_dir / "detbooth").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    return tmp_path, env


def run_bash(script: str, stack, workdir, timeout: float) -> subprocess.CompletedProcess:
    folder, env = workdir
    script = script.replace("http://127.0.0.1:8000", stack.url)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=folder, env=env, capture_output=True,
                       text=True, timeout=timeout, check=False)
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="the README's curl uses curl and jq")
def test_the_curl_examples(stack, workdir):
    script = block("bash", "URL=http://127.0.0.1:8000")
    r = run_bash(script + '\necho "JOB=$JOB GEN=$GEN"\n', stack, workdir, timeout=900)
    folder = workdir[0]
    job, gen = re.search(r"JOB=(\w+) GEN=(\w+)", r.stdout).groups()
    assert '"status": "succeeded"' in r.stdout.replace('"status":"succeeded"', '"status": "succeeded"')
    assert '"ids": [' in r.stdout and "next_cursor" in r.stdout  # the jobs page through jq
    assert "event: status" in r.stdout and "succeeded" in r.stdout  # the event stream ran to the end
    with Image.open(folder / "0.png") as im:  # the generation finished within its 60 s wait
        assert im.size == (64, 64)
    assert job != gen


@pytest.mark.slow
def test_the_cli_examples(stack, workdir):
    script = block("bash", "export DETBOOTH_URL=")
    r = run_bash(script + '\necho "JOB=$JOB"\n', stack, workdir, timeout=900)
    folder = workdir[0]
    with Image.open(folder / "drawn.png") as im:
        assert im.size == (480, 200)
    assert {p.name for p in (folder / "drawn").iterdir()} == {"page.boxes.png", "sign.boxes.png"}
    assert json.loads((folder / "boxes.json").read_text())["results"][0]["boxes"]
    for phase in ("class images [", "training [", "exporting ["):
        assert phase in r.stderr, r.stderr  # `jobs watch` on a pipe: a line per phase step
    assert "status: succeeded" in r.stderr
    images = sorted((folder / "out").iterdir())
    assert len(images) == 2
    job = re.search(r"JOB=(\w+)", r.stdout).group(1)
    assert f"{job}\tfinetune\tsucceeded" in r.stdout


def test_the_python_example(stack, workdir):
    folder, env = workdir
    code = block("python", "import os")
    env = {**env, "DETBOOTH_URL": stack.url, "DETBOOTH_API_KEY": KEY}
    r = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    boxes, rest = r.stdout.split(" boxes; ")
    assert int(boxes) > 0 and rest.startswith("succeeded ['http"), r.stdout  # done within wait_s=60
