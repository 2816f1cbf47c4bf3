"""``python -m services.detection``: serve on $DETBOOTH_DETECTION_HOST:$DETBOOTH_DETECTION_PORT (127.0.0.1:8001).

``--fd N`` serves on an already bound socket instead (tests use it to get a free port without a race)."""

from __future__ import annotations

import argparse
import logging
import socket

import uvicorn

from .app import create_app
from .memory import bound_native_heap
from .settings import DetectionSettings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.detection")
    parser.add_argument("--fd", type=int, default=None, help="serve on this inherited, bound socket")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bound_native_heap()  # before any engine or pool thread exists
    settings = DetectionSettings()
    app = create_app(settings)
    if args.fd is not None:
        # not uvicorn.run(fd=...): uvicorn wraps the fd as AF_UNIX, so asyncio leaves Nagle on for its TCP
        # connections, and each response then waits ~40 ms for the client's delayed ACK
        sock = socket.socket(fileno=args.fd)  # the real family (AF_INET): TCP_NODELAY is set per connection
        config = uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=30)
        uvicorn.Server(config).run(sockets=[sock])
    else:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
