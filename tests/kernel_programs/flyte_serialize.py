"""Flyte tasks, a @dynamic and a workflow declared in a pinned kernel, serialized offline as registration would:
each task's image and environment, the default image, and the warnings about tasks with their own."""

import os
import warnings
from collections import OrderedDict

from flytekit import ImageSpec, dynamic, task, workflow
from flytekit.configuration import ImageConfig, SerializationSettings
from flytekit.tools.translator import get_serializable


@task
def double(x: int) -> int:
    return 2 * x


@dynamic
def fan(n: int) -> int:
    return double(x=n)


with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")

    @task(container_image="registry.example/other:3")
    def own(x: int) -> int:
        return x

    @task(container_image=ImageSpec(name="gpu", registry="registry.example", packages=["torch"]))
    def spec_task(x: int) -> int:
        return x


@workflow
def pipeline(x: int) -> int:
    return own(x=fan(n=double(x=x)))


settings = SerializationSettings(image_config=ImageConfig.auto_default_image())
entities = OrderedDict()
get_serializable(entities, settings, pipeline)
images = {}
for entity in entities.values():
    template = getattr(entity, "template", None)
    if template is not None and getattr(template, "container", None) is not None:
        images[template.id.name.rsplit(".", 1)[-1]] = {
            "image": template.container.image,
            "env": dict(template.container.env),
        }
flyte = {
    "images": images,
    "default": os.environ.get("FLYTE_INTERNAL_IMAGE"),
    "warnings": [str(w.message) for w in caught],
}
