"""A local S3 stand-in for tests: moto's server on 127.0.0.1, a bucket of images, and the fsspec
``storage_options`` (and environment) that reach it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

KEY = SECRET = "testing"


@contextlib.contextmanager
def s3_bucket(files: dict[str, Path | bytes], bucket: str = "photos") -> Iterator[dict]:
    """Serve ``files`` ({key: local file or bytes}) from ``bucket`` of a moto S3 server started
    on loopback for the block; yields the fsspec ``storage_options`` (plus ``env``: the same as
    AWS_* variables, for code that takes no options)."""
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # s3fs caches file systems by their arguments, not by the environment they were made in:
    # one from an earlier server would still talk to it
    s3fs.S3FileSystem.clear_instance_cache()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=KEY, aws_secret_access_key=SECRET,
        )  # fmt: skip
        # moto keeps its buckets in this process's memory, across servers: start from none
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
        client.create_bucket(Bucket=bucket)
        for key, data in files.items():
            body = data if isinstance(data, bytes) else Path(data).read_bytes()
            client.put_object(Bucket=bucket, Key=key, Body=body)
        options = {"key": KEY, "secret": SECRET, "endpoint_url": endpoint}
        env = {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        yield {"options": options, "env": env, "bucket": bucket, "client": client}
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
