"""The end-to-end tests share the integration fixtures."""

from tests.integration.conftest import worker_stack  # noqa: F401  (a fixture)
