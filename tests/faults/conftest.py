"""Fault tests: a table of every fault, what was checked and the result, printed at the end of the session.

A test names its fault with `@pytest.mark.fault("fault", "what is checked")` (any test in the suite may);
`fault_note(text)` adds a measured detail (a latency, a count) to its row.
"""

import pytest


class FaultTable:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []  # fault, checked, result, note

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        marker = item.get_closest_marker("fault")
        if marker is None:
            return
        report = outcome.get_result()
        done = report.when == "call" or (report.when == "setup" and not report.passed)
        if not done:
            return
        fault = marker.args[0] if marker.args else item.name
        checked = marker.args[1] if len(marker.args) > 1 else ""
        if hasattr(report, "wasxfail"):
            result = "KNOWN GAP (xfail)"
        elif report.skipped:
            result = "SKIPPED"
        elif report.passed:
            result = "PASS"
        else:
            result = "FAIL" if report.when == "call" else "ERROR"
        notes = "; ".join(v for k, v in item.user_properties if k == "fault_note")
        self.rows.append((fault, checked, result, notes))

    def pytest_terminal_summary(self, terminalreporter):
        if not self.rows:
            return
        tr = terminalreporter
        tr.section("faults: what was checked")
        widths = [max(len(r[i]) for r in [("fault", "checked", "result", "")] + self.rows) for i in range(3)]
        widths = [min(w, 100) for w in widths]
        head = ("fault", "checked", "result", "measured")
        line = lambda r: "  ".join(str(c)[:widths[i]].ljust(widths[i]) if i < 3 else str(c)
                                   for i, c in enumerate(r))
        tr.write_line(line(head))
        tr.write_line("  ".join("-" * w for w in widths) + "  --------")
        for r in self.rows:
            tr.write_line(line(r))


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("detbooth-fault-table"):
        config.pluginmanager.register(FaultTable(), "detbooth-fault-table")


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
