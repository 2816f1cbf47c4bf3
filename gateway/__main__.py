"""`python -m gateway`: serve the gateway with uvicorn on DETBOOTH_GATEWAY_HOST:DETBOOTH_GATEWAY_PORT."""

import logging

import uvicorn

from gateway.main import create_app
from gateway.settings import GatewaySettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings()
    uvicorn.run(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                log_level="info", timeout_graceful_shutdown=10, access_log=settings.access_log)


if __name__ == "__main__":
    main()
