"""A real S3 API on loopback: moto's server mode (ThreadedMotoServer) on a free port, and the env that points
boto/s3fs at it."""

from collections.abc import Iterator
from contextlib import contextmanager

from tests.procs import free_port


@contextmanager
def moto_s3(bucket: str) -> Iterator[dict[str, str]]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        bucket_fs(env).mkdir(bucket)
        yield env
    finally:
        server.stop()


def bucket_fs(env: dict[str, str]):
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=env["AWS_ENDPOINT_URL"], skip_instance_cache=True,
                             use_listings_cache=False)


def objects(env: dict[str, str], bucket: str) -> list[str]:
    """Every object key in the bucket, as the S3 API lists it."""
    fs = bucket_fs(env)
    return sorted(p[len(bucket) + 1:] for p in fs.find(bucket))
