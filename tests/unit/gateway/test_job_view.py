"""The owner's view of a job: typed results, artifact keys turned into download links, nothing private."""

from gateway.schemas import job_view
from services.contracts.finetune import FinetuneResult, TrainingMetrics
from services.contracts.generate import GeneratedImage, GenerateResult
from services.contracts.jobs import (
    FinetuneResultView,
    GenerateResultView,
    Job,
    JobStatus,
    JobType,
    JobView,
    new_job_id,
    utcnow,
)

BASE = "http://gw.test/"


def _job(job_type: JobType, result: dict | None) -> Job:
    return Job(id=new_job_id(), type=job_type, owner="owner-hash", status=JobStatus.succeeded, created_at=utcnow(),
               spec={"prompt": "a dog", "inputs": ["jobs/x/inputs/0.png"]}, result=result)


def test_a_finetune_result_is_typed_with_links_to_its_artifacts():
    job_id = new_job_id()
    result = FinetuneResult(model_id=job_id, model=f"jobs/{job_id}/model", method="lora",
                            config=f"jobs/{job_id}/config.yaml", logs=f"jobs/{job_id}/logs", steps=24,
                            metrics=TrainingMetrics(loss=0.25, it_per_s=3.5))
    view = job_view(_job(JobType.finetune, result.model_dump()), BASE)
    assert isinstance(view.result, FinetuneResultView)
    assert view.result.model_url == f"{BASE}artifacts/jobs/{job_id}/model"
    assert view.result.config_url == f"{BASE}artifacts/jobs/{job_id}/config.yaml"
    assert view.result.steps == 24 and view.result.metrics.it_per_s == 3.5
    body = view.model_dump(mode="json")
    assert body["result"]["metrics"] == {"loss": 0.25, "it_per_s": 3.5}  # only the values that were reported
    assert "owner" not in body and "inputs" not in body["spec"]


def test_a_generation_result_gives_each_image_as_a_link_and_no_artifact_key():
    result = GenerateResult(images=[GeneratedImage(key="jobs/g/0.png", seed=7), GeneratedImage(key="jobs/g/1.png",
                                                                                             seed=8)],
                            model="base", params={"prompt": "a dog", "key": "kept as sent"}, batch_images=2)
    view = job_view(_job(JobType.generate, result.model_dump()), BASE)
    assert isinstance(view.result, GenerateResultView)
    body = view.model_dump(mode="json")["result"]
    assert body["images"] == [{"url": f"{BASE}artifacts/jobs/g/0.png", "seed": 7},
                              {"url": f"{BASE}artifacts/jobs/g/1.png", "seed": 8}]
    assert body["params"] == {"prompt": "a dog", "key": "kept as sent"}  # the request's own fields are untouched


def test_a_client_reads_each_result_back_as_the_same_type():
    """The client parses JSON into the same JobView: the union must pick the right result for either job."""
    tuned = job_view(_job(JobType.finetune, FinetuneResult(
        model_id="m", model="jobs/m/model", method="full", config="jobs/m/config.yaml", logs="jobs/m/logs",
        steps=3).model_dump()), BASE)
    made = job_view(_job(JobType.generate, GenerateResult(
        images=[GeneratedImage(key="jobs/g/0.png", seed=1)], model="m", params={}, batch_images=1).model_dump()), BASE)
    for view in (tuned, made):
        again = JobView.model_validate_json(view.model_dump_json())
        assert type(again.result) is type(view.result) and again == view


def test_a_job_without_a_result_has_none():
    assert job_view(_job(JobType.generate, None), BASE).result is None
