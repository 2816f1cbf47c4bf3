"""Fault tests: the `fault_note` fixture and the stack shared by the bad-input, security and load tests.

A test names its fault with `@pytest.mark.fault("fault", "what is checked")` (any test in the suite may);
`fault_note(text)` adds a measured detail (a latency, a count) to its row of the table printed at the end of
the session (tests/fault_table.py).
"""

import pytest


@pytest.fixture
def fault_note(request):
    def note(text: str) -> None:
        request.node.user_properties.append(("fault_note", text))

    return note


@pytest.fixture(scope="session")
def full_stack(redis_server, logs_dir, tmp_path_factory, detection_service):
    """The session's detection service + a gateway + worker of their own (short limits), shared by the
    bad-input, security and load tests."""
    from types import SimpleNamespace

    from tests.faults.support import FAST_REDELIVERY
    from tests.procs import base_env, start_stack

    env = base_env(redis_server, tmp_path_factory.mktemp("faults-data"), DETBOOTH_DETECTION_URL=detection_service.url,
                   DETBOOTH_RATE_LIMIT_PER_MINUTE="100000", DETBOOTH_MAX_TOTAL_BYTES="3000000",
                   DETBOOTH_MAX_FILE_BYTES="1000000", DETBOOTH_DETECTION_TIMEOUT_S="20",
                   DETBOOTH_MAX_WAIT_S="5", DETBOOTH_BODY_READ_TIMEOUT_S="3", DETBOOTH_GEN_MAX_SIDE="128",
                   **FAST_REDELIVERY)
    stack = start_stack(env, logs_dir)
    yield SimpleNamespace(url=stack.url, env=env, gateway=stack.gateway, worker=stack.worker,
                          detection=detection_service)
    stack.stop()
