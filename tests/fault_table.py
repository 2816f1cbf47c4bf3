"""The table of every fault test (`@pytest.mark.fault`), what was checked and the result, printed at the end
of the session. Registered by tests/conftest.py, the conftest that pytest-xdist's controller loads too: rows
are built from the test reports, which reach the controller from the workers."""

import pytest


class FaultTable:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []  # fault, checked, result, note

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        marker = item.get_closest_marker("fault")
        if marker is not None:
            # an attribute of the report, so that it travels with it from a pytest-xdist worker to the controller
            outcome.get_result().fault = [marker.args[0] if marker.args else item.name,
                                          marker.args[1] if len(marker.args) > 1 else ""]

    def pytest_runtest_logreport(self, report):
        if getattr(report, "fault", None) is None:
            return
        if not (report.when == "call" or (report.when == "setup" and not report.passed)):
            return
        fault, checked = report.fault
        if hasattr(report, "wasxfail"):
            result = "KNOWN GAP (xfail)"
        elif report.skipped:
            result = "SKIPPED"
        elif report.passed:
            result = "PASS"
        else:
            result = "FAIL" if report.when == "call" else "ERROR"
        notes = "; ".join(v for k, v in report.user_properties if k == "fault_note")
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
