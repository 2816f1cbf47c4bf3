"""GET /artifacts/jobs/{job_id}/...: download a job's images and model files (owner only)."""

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from gateway.auth import Caller
from gateway.state import AppState, State
from services.contracts.problems import Problem
from services.jobs.artifacts import BadArtifactKey, check_key
from services.jobs.interface import JobNotFound

router = APIRouter(tags=["artifacts"])
_MEDIA = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
          "json": "application/json", "yaml": "application/yaml", "txt": "text/plain", "csv": "text/csv"}


def _owns(state: AppState, job_id: str, owner: str) -> bool:
    try:
        state.store.get_owned(job_id, owner)
        return True
    except JobNotFound:
        pass
    try:  # a fine-tune's model outlives its job record
        state.store.get_model(job_id, owner)
        return True
    except JobNotFound:
        return False


@router.get("/artifacts/{path:path}", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def get_artifact(path: str, state: State, owner: Caller) -> StreamingResponse:
    not_found = Problem(404, "Artifact not found", f"no artifact {path!r} for this API key", type_="artifact-not-found")
    try:
        key = check_key(path)
    except BadArtifactKey:
        raise not_found from None
    parts = key.split("/")
    if len(parts) < 3 or parts[0] != "jobs" or not _owns(state, parts[1], owner) or not state.artifacts.is_file(key):
        raise not_found
    media = _MEDIA.get(key.rsplit(".", 1)[-1].lower(), "application/octet-stream")
    size = state.artifacts.size(key)
    handle = state.artifacts.open(key)

    def chunks():
        with handle:
            while block := handle.read(1 << 16):
                yield block

    filename = parts[-1]
    return StreamingResponse(chunks(), media_type=media, headers={
        "Content-Length": str(size), "Content-Disposition": f'inline; filename="{filename}"'})
