"""Locust user for `bench/load_detect.py`: POST /detect through the gateway with images of varied sizes.

LOAD_SHAPES distinct sizes (default 8) drawn with LOAD_SEED (default 0): two runs with different seeds send
shapes the service has not seen before, which is how the load test checks that memory does not grow with them.
"""

import io
import os
import random

import gevent
import numpy as np
from locust import HttpUser, constant, events, task
from locust.exception import StopUser
from PIL import Image

LIMIT = int(os.environ.get("LOAD_REQUESTS", "1000"))
SHAPES = int(os.environ.get("LOAD_SHAPES", "8"))
SEED = int(os.environ.get("LOAD_SEED", "0"))
MAX_SIDE = int(os.environ.get("LOAD_MAX_SIDE", "1000"))


def _png(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 255, np.uint8)
    img[h // 3: h // 3 + max(h // 8, 4), w // 8: w - w // 8] = rng.integers(0, 80, 3)  # a dark bar: a "line"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def _sizes(count: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(rng.integers(48, MAX_SIDE)), int(rng.integers(48, MAX_SIDE))) for _ in range(count)]


IMAGES = [_png(w, h, SEED * 1000 + i) for i, (w, h) in enumerate(_sizes(SHAPES, SEED))]


class DetectUser(HttpUser):
    wait_time = constant(0)

    @task
    def detect(self) -> None:
        stats = self.environment.stats.total
        if stats.num_requests >= LIMIT:
            gevent.spawn(self.environment.runner.quit)  # not from inside this user's own greenlet
            raise StopUser()
        data = random.choice(IMAGES)
        self.client.post("/detect", files=[("images", ("i.png", data, "image/png"))],
                         headers={"Authorization": f"Bearer {os.environ['LOAD_KEY']}"}, name="/detect")


@events.quitting.add_listener
def _(environment, **kw) -> None:
    environment.process_exit_code = 1 if environment.stats.total.num_failures else 0
