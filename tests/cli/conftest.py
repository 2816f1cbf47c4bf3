import pytest

from tests.cli.stack import start_stack


@pytest.fixture(scope="module")
def stack(redis_server, logs_dir, tmp_path_factory):
    """One real stack (gateway, worker, detection when present) for a test module."""
    s = start_stack(redis_server, tmp_path_factory.mktemp("data"), logs_dir)
    yield s
    s.stop()
