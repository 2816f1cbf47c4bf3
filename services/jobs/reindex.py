"""Rebuild what Redis knows from the artifact store: fine-tuned models, their owners, and storage use.

Every fine-tune writes `jobs/<id>/model.json` (its owner and registration) beside its model. When Redis
comes back empty (no persistence, a new server), the gateway runs this at start (and its sweeper before
every sweep) because the "indexed" marker is gone; `python -m services.jobs.reindex` runs it on demand.
Generated images of jobs whose records were lost are unreachable and are left to the sweeper.
"""

import argparse
import json
import logging
from dataclasses import dataclass, field

from services.jobs.artifacts import ArtifactStore
from services.jobs.interface import JobSystem

log = logging.getLogger(__name__)


@dataclass
class ReindexReport:
    models_registered: list[str] = field(default_factory=list)
    models_known: int = 0
    owners: set[str] = field(default_factory=set)
    bytes_counted: int = 0
    unreadable: list[str] = field(default_factory=list)


def reindex(system: JobSystem, artifacts: ArtifactStore) -> ReindexReport:
    report = ReindexReport()
    for job_id in artifacts.children("jobs"):
        key = f"jobs/{job_id}/model.json"
        if not artifacts.is_file(key):
            continue
        try:
            manifest = json.loads(artifacts.read_bytes(key))
            owner, info = manifest["owner"], manifest["info"]
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.error("reindex: %s is unreadable (%s); that model stays unlisted", key, e)
            report.unreadable.append(job_id)
            continue
        if system.model_owner(job_id) is None:
            system.register_model(owner, job_id, info)
            report.models_registered.append(job_id)
        else:
            report.models_known += 1
        size = artifacts.usage(f"jobs/{job_id}")[0]
        system.record_storage(owner, job_id, size)
        report.owners.add(owner)
        report.bytes_counted += size
    system.mark_indexed()
    if report.models_registered:
        log.warning("reindex: %d fine-tuned model(s) of %d owner(s) registered again from the artifact store",
                    len(report.models_registered), len(report.owners))
    return report


def ensure_indexed(system: JobSystem, artifacts: ArtifactStore) -> ReindexReport | None:
    """Reindex when Redis has no marker (it lost its data, or this is a new deployment); else None."""
    if system.is_indexed():
        return None
    log.warning("the job store has no index marker (Redis lost its data, or this is a new deployment): "
                "rebuilding fine-tuned models and owners from the artifact store")
    return reindex(system, artifacts)


def main(argv: list[str] | None = None) -> int:
    from services.jobs.redis_system import RedisJobSystem
    from services.jobs.settings import JobSettings

    parser = argparse.ArgumentParser(prog="python -m services.jobs.reindex", description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = JobSettings()
    report = reindex(RedisJobSystem.from_settings(settings), ArtifactStore(settings.artifacts_location))
    print(json.dumps({"models_registered": report.models_registered, "models_already_known": report.models_known,
                      "owners": sorted(report.owners), "bytes": report.bytes_counted,
                      "unreadable": report.unreadable}))
    return 1 if report.unreadable else 0


if __name__ == "__main__":
    raise SystemExit(main())
