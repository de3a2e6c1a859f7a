"""A notebook's Flyte project (written into its folder as ``flows/pipeline.py`` by tests/test_flyte_e2e.py):
a task, a @dynamic, a workflow, and a task that names its own image; ``where()`` says where each ran."""

import os
import sys

from flytekit import dynamic, task, workflow


def where() -> str:
    return " | ".join(
        [
            os.path.realpath(sys.executable),
            sys.version.split()[0],
            str(os.path.exists("/.dockerenv")),
            os.environ.get("ENVPIN_IMAGE", "-"),
            os.environ.get("ENVPIN_IMAGE_ID", "-"),
            str(os.path.isdir("/opt/python/lib/python3.11/site-packages/flytekit")),
        ]
    )


@task
def double(x: int) -> int:
    return 2 * x


@task
def report(x: int) -> str:
    return f"{x} | {where()}"


@dynamic
def fan(n: int) -> int:
    return double(x=double(x=n))


@workflow
def pipeline(x: int) -> str:
    return report(x=fan(n=double(x=x)))


@task(container_image="envpin-test/flyte-code:latest")
def elsewhere(x: int) -> str:
    return f"{x} | {where()}"
