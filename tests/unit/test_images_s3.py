"""The S3 artifact store needs s3fs wherever the store is opened: the gateway and worker images install it."""

import re
import tomllib

from tests.procs import ROOT


def test_s3_extra_is_in_pyproject_and_in_both_images():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("s3fs==") for d in extras["s3"])
    for dockerfile in ("gateway.Dockerfile", "dreambooth.Dockerfile"):
        text = (ROOT / "docker" / dockerfile).read_text()
        installs = re.findall(r"pip install '\.\[([a-z0-9,]+)\]'", text)
        assert any("s3" in group.split(",") for group in installs), (dockerfile, installs)
