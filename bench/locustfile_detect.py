"""Locust user for `bench/load_detect.py`: POST /detect through the gateway with images of varied sizes."""

import io
import os
import random

import gevent
import numpy as np
from locust import HttpUser, constant, events, task
from locust.exception import StopUser
from PIL import Image

SIZES = [(64, 48), (200, 120), (320, 320), (480, 200), (640, 480), (123, 457), (800, 600), (97, 1000)]
LIMIT = int(os.environ.get("LOAD_REQUESTS", "1000"))


def _png(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 255, np.uint8)
    img[h // 3: h // 3 + max(h // 8, 4), w // 8: w - w // 8] = rng.integers(0, 80, 3)  # a dark bar: a "line"
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


IMAGES = [_png(w, h, i) for i, (w, h) in enumerate(SIZES)]


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
