"""The contracts module: torch-free, the only place a shared model is defined, one problem `type` scheme."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from services.contracts import account, catalog, detect, finetune, generate, jobs, problems
from services.contracts.problems import Problem, problem_type, validation_problem

ROOT = Path(__file__).resolve().parents[3]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_contracts_import_neither_torch_nor_fastapi():
    code = ("import sys, services.contracts.problems, services.contracts.detect, services.contracts.finetune, "
            "services.contracts.generate, services.contracts.jobs, services.contracts.catalog, "
            "services.contracts.account; "
            "print(sorted(m for m in ('torch', 'fastapi', 'starlette', 'diffusers', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("package", ["gateway", "detbooth_client"])
def test_gateway_and_client_import_no_service_internals(package):
    bad = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p)
                                            if m.startswith(("services.dreambooth", "services.detection")))
           for p in (ROOT / package).rglob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_contract_model_is_defined_twice():
    """Every pydantic model the contracts define exists under that name nowhere else in the code."""
    names = {name for module in (detect, finetune, generate, jobs, problems, catalog, account)
             for name, obj in vars(module).items()
             if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == module.__name__}
    assert {"DetectResponse", "DetectParams", "Box", "FinetuneConfig", "GenerateParams", "Job", "JobView",
            "TrainingMetrics", "FinetuneResult", "GenerateResult", "ProblemDetails", "ModelList", "WhoAmI"} <= names
    twins = []
    for path in [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "services").rglob("*.py"),
                 *(ROOT / "detbooth_client").rglob("*.py")]:
        if "contracts" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name in names:
                twins.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert twins == []


def test_box_points_are_integers():
    box = detect.Box(points=[[1, 2], [3, 4], [5, 6], [7, 8]], score=0.9)
    assert box.model_dump()["points"] == [[1, 2], [3, 4], [5, 6], [7, 8]]
    with pytest.raises(ValidationError):
        detect.Box(points=[[1.5, 2], [3, 4], [5, 6], [7, 8]], score=0.9)


def test_one_problem_type_scheme():
    assert problem_type("job-not-found") == "urn:detbooth:problem:job-not-found"
    assert problem_type("urn:detbooth:problem:x") == "urn:detbooth:problem:x"
    body = Problem(429, "Too many fine-tunes", "at most 2", type_="limit-exceeded", limit="finetunes", value=2).body("/x")
    assert body == {"type": "urn:detbooth:problem:limit-exceeded", "title": "Too many fine-tunes", "status": 429,
                    "detail": "at most 2", "instance": "/x", "limit": "finetunes", "value": 2}
    assert problems.ProblemDetails.model_validate(body).status == 429


def test_validation_problem_names_every_field():
    with pytest.raises(ValidationError) as err:
        generate.GenerateParams.model_validate({"prompt": " ", "width": 13})
    p = validation_problem(err.value, prefix=("body",))
    assert p.status == 422 and p.type == "validation-error"
    assert {tuple(e["loc"]) for e in p.errors} == {("body", "prompt"), ("body", "width")}
    assert "body.prompt" in p.detail and "body.width" in p.detail


def test_training_metrics_refuse_unknown_names():
    """The bug of issue 11: training said `it_per_s`, readers looked for `it_s`. One name, and no other."""
    assert finetune.TrainingMetrics(it_per_s=2.5, loss=0.1).reported() == {"it_per_s": 2.5, "loss": 0.1}
    with pytest.raises(ValidationError):
        finetune.TrainingMetrics.model_validate({"it_s": 2.5})


def test_finetune_result_keeps_only_reported_metrics():
    r = finetune.FinetuneResult(model_id="j", model="jobs/j/model", method="lora", config="jobs/j/config.yaml",
                                logs="jobs/j/logs", steps=4, metrics=finetune.TrainingMetrics(loss=0.2))
    dumped = r.model_dump(mode="json")
    assert dumped["metrics"] == {"loss": 0.2} and dumped["resumed_from_step"] is None
    assert finetune.FinetuneResult.model_validate(dumped) == r
