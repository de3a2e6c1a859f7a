"""Adapters for real job engines: each makes its engine run jobs in the pinned image.

Registered by ``%load_ext envpin``; armed by ``%use_image`` when their library
is installed; installed into the library when it is imported (see
``base.LibraryAdapter``).  One module per engine:

* ``executor_adapter``: envpin's own ``envpin.submit`` (retires its workers on a re-pin);
* ``yt_adapter``: YTsaurus (``ytsaurus-client``), through ``user_job_spec_defaults``;
* ``ray_adapter``: Ray, ``runtime_env`` with ``image_uri`` and ``env_vars``;
* ``flyte_adapter``: Flyte (``flytekit``), ``container_image`` of tasks;
* ``dask_adapter``: Dask (``distributed``), the image for cluster managers and a check at
  ``Client`` connect (``dask_check``); ``dask_cluster``: scheduler and workers as containers of the image.
"""

from __future__ import annotations


def builtin() -> list:
    """One of each built-in adapter, in registration order (envpin's own executor first)."""
    from envpin.adapters.dask_adapter import DaskAdapter
    from envpin.adapters.executor_adapter import ExecutorAdapter
    from envpin.adapters.flyte_adapter import FlyteAdapter
    from envpin.adapters.ray_adapter import RayAdapter
    from envpin.adapters.yt_adapter import YtsaurusAdapter

    return [ExecutorAdapter(), YtsaurusAdapter(), RayAdapter(), FlyteAdapter(), DaskAdapter()]


def get(name: str):
    """The registered adapter called ``name`` (``"ytsaurus"``, ``"ray"``, ``"flyte"``, ``"dask"``), for its options."""
    from envpin.session import stamping

    return stamping.registered(name)
