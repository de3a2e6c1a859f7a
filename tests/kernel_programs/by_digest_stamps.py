"""What a kernel pinned ``--by-digest`` gives each engine's jobs (tests/test_pull.py): ``seen``, the image of
envpin's stamp, of a Flyte task and of a Ray runtime_env, after a YTsaurus map went to the fake proxy."""

import yt.wrapper as yt
from flytekit import task

import envpin
from envpin.adapters.ray_adapter import stamp_runtime_env
from envpin.session import stamping

PROXY = ...  # the fake YTsaurus proxy


@task
def double(x: int) -> int:
    return 2 * x


def mapper(row):
    yield row


yt.YtClient(proxy=PROXY).run_map(mapper, "//tmp/in", "//tmp/out", sync=False)
seen = {
    "stamp": envpin.stamp()["image"],
    "flyte": double.container_image,
    "ray": stamp_runtime_env({}, stamping.current_stamp(), "image_uri", "x")["image_uri"],
}
