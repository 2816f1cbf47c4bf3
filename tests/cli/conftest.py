import pytest


@pytest.fixture(scope="module")
def stack(real_stack):
    """The session's real stack (detection service, gateway, worker), shared with the console tests."""
    return real_stack
