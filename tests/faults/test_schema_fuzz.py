"""schemathesis against the gateway's OpenAPI: every operation with a valid key → no 5xx, responses match it.

(`schemathesis.pytest.from_fixture` does not run under pytest 9, so the operations are driven here with
hypothesis directly: one bounded run per operation.)
"""

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def cancel_all_jobs(url: str) -> None:
    """Fuzzed generate/finetune requests are valid jobs (up to 1024 px, 150 steps): stop them so the shared
    worker is free for the tests after this one."""
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer key-alice"}, timeout=30) as c:
        cursor = None
        while True:
            page = c.get("/jobs", params={"limit": 100, **({"cursor": cursor} if cursor else {})}).json()
            for job in page["jobs"]:
                if job["status"] in ("queued", "running"):
                    c.post(f"/jobs/{job['id']}/cancel")
            cursor = page.get("next_cursor")
            if not cursor:
                return


@pytest.mark.fault("schemathesis: every operation, valid key",
                   "no 5xx; content type and body match the OpenAPI (≤ 20 examples per operation)")
def test_gateway_conforms_to_its_openapi(full_stack, fault_note):
    schema = schemathesis.openapi.from_url(f"{full_stack.url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 10
    failures: dict[str, str] = {}
    calls = 0
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def run(case):
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=full_stack.url, headers={"Authorization": "Bearer key-alice"},
                                   timeout=30, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - every operation's failure, then fail once
            failures[f"{op.method.upper()} {op.path}"] = str(e)[:2000]
    cancel_all_jobs(full_stack.url)
    fault_note(f"{len(operations)} operations, {calls} requests")
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
