"""The client and the gateway speak one set of models: each client method returns the very class its route
declares, defined in services/contracts; and the client stays torch-free."""

import subprocess
import sys
from typing import get_type_hints

from detbooth_client import DetBoothClient
from gateway.routes import detect, finetune, generate, jobs, models, whoami
from tests.procs import ROOT

CLIENT_METHODS = {  # (method, path) of a gateway route -> the client method that calls it
    ("POST", "/detect"): "detect",
    ("POST", "/finetune"): "finetune",
    ("POST", "/generate"): "generate",
    ("GET", "/jobs"): "jobs",
    ("GET", "/jobs/{job_id}"): "job",
    ("POST", "/jobs/{job_id}/cancel"): "cancel",
    ("GET", "/models"): "catalog",
    ("GET", "/whoami"): "whoami",
}


def test_each_client_method_returns_the_class_its_route_declares():
    declared = {(method, route.path): route.response_model
                for module in (detect, finetune, generate, jobs, models, whoami)
                for route in module.router.routes for method in route.methods}
    returned = {key: get_type_hints(getattr(DetBoothClient, name))["return"] for key, name in CLIENT_METHODS.items()}
    assert returned == {key: declared[key] for key in CLIENT_METHODS}
    assert {cls.__module__.rpartition(".")[0] for cls in returned.values()} == {"services.contracts"}


def test_the_client_imports_no_torch_nor_server_stack():
    code = ("import sys, detbooth_client, detbooth_client.cli; "
            "print(sorted(m for m in ('torch', 'fastapi', 'starlette', 'gateway', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
