"""Package a Flyte project from a pinned kernel as ``pyflyte package`` would (``flows.tgz``), importing its module
after %use_image so its tasks are stamped; ``conflicts``: the warnings about tasks that name their own image;
``bundle_warnings``: envpin's warnings about raw container tasks registered with a code bundle."""

import importlib
import warnings

from flytekit.configuration import FastSerializationSettings, ImageConfig, SerializationSettings
from flytekit.tools.fast_registration import FastPackageOptions
from flytekit.tools.repo import serialize_and_package

MODULE = ...  # the project's module with the tasks
PACKAGES = ...  # the packages to serialize
FAST = ...  # fast registration: the notebook's code travels in a bundle
settings = SerializationSettings(
    image_config=ImageConfig.auto_default_image(),
    fast_serialization_settings=FastSerializationSettings(enabled=FAST, destination_dir="/root"),
)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    importlib.import_module(MODULE)  # declared after %use_image: stamped
    serialize_and_package(
        PACKAGES, settings, source=".", output="flows.tgz", fast_options=FastPackageOptions([]) if FAST else None
    )
conflicts = [str(w.message) for w in caught if "ImageConflictWarning" in type(w.message).__name__]
bundle_warnings = [str(w.message) for w in caught if type(w.message).__name__ == "BundleWarning"]
