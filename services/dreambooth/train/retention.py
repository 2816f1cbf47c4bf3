"""What a succeeded fine-tune keeps in the artifact store: its exported model, its config and its logs.

Full-state checkpoints (about 10 GB each for a full SD-1.5 fine-tune) exist only so that a re-delivered
task can resume; once the model is exported and registered they have no further use, and neither have the
uploaded photos, which are personal data. A failed or canceled job keeps its checkpoints until it is deleted
or expires, so that nothing the user might want to inspect is lost early.
"""

import json
from typing import Any

from services.jobs.artifacts import ArtifactStore

MANIFEST = "model.json"
KEPT_AFTER_SUCCESS = frozenset({"model", "config.yaml", "logs", MANIFEST})


def write_model_manifest(artifacts: ArtifactStore, owner: str, model_id: str, info: dict[str, Any]) -> str:
    """`jobs/<id>/model.json`: the model's owner and registration, so that services.jobs.reindex can list
    it again after Redis lost its data."""
    body = {"model_id": model_id, "owner": owner, "info": info}
    return artifacts.write_bytes(f"jobs/{model_id}/{MANIFEST}", json.dumps(body, indent=1).encode())


def keep_only_the_model(artifacts: ArtifactStore, prefix: str) -> list[str]:
    """Delete every top-level part of `prefix` (`jobs/<id>`) but the kept ones; returns the parts removed."""
    parts = sorted({key[len(prefix) + 1:].split("/", 1)[0] for key in artifacts.list(prefix)})
    removed = [p for p in parts if p not in KEPT_AFTER_SUCCESS]
    for part in removed:
        artifacts.delete(f"{prefix}/{part}")
    return removed
