import pytest


@pytest.fixture(scope="module")
def stack(real_stack):
    """The session's real stack: detection service (shared), gateway and worker."""
    return real_stack
