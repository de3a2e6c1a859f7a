"""YTsaurus: every user job of every operation runs in the pinned image.

Stamping goes through the client's own configuration, the place a cluster
admin or a user would put it:

* ``user_job_spec_defaults``: ``docker_image`` (the pin's reference, exactly
  as pinned) and ``environment`` (``ENVPIN_IMAGE``, ``ENVPIN_IMAGE_ID``,
  ``YT_JOB_DOCKER_IMAGE``).  The client merges these *under* each user job
  (mapper, reducer, reduce combiner, every vanilla task), so a job's own
  ``docker_image`` or environment value wins;
* ``pickling.framework = "cloudpickle"``: the client defaults to dill, whose
  pickles need dill at the same version on the job side, which images built
  for envpin do not promise; cloudpickle is the pickler the image is
  fingerprinted for (and the one ``%use_image`` compared);
* ``pickling.check_python_version = True``: the job refuses to start under a
  different Python instead of failing later in an unpickled code object;
* ``pickling.python_binary``: when the kernel itself runs in the pinned image,
  its interpreter's path (the job runs the very same file).

These go into the global configuration (``yt.wrapper.config``, used without
a client) and the template every new ``YtClient`` copies.  A ``YtClient``
created *before* ``%use_image`` already holds its own copy: the one wrapper
below (around ``UserJobSpecBuilder.build``, which every user job of every
operation type goes through, ``run_operation`` with spec builders included)
brings such a client's configuration up to date before the job is pickled,
and after the spec is built warns about a job whose image is not the pin.

Why not ``operation_base_layer`` / ``YT_BASE_LAYER``: the client lowercases
that value (``user_layer.lower()``), which breaks references with capitals,
and it gives way to any ``layer_paths``.  If it is set, the client writes
its (lowercased) image into jobs before the defaults apply, so those jobs
keep it, with the conflict warning.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..hooks import Stamp
from .base import LibraryAdapter

class YtsaurusAdapter(LibraryAdapter):
    name = "ytsaurus"
    module = "yt.wrapper"

    def __init__(self) -> None:
        super().__init__()
        self._undo: list[tuple[dict, str, Any, Any, str]] = []  # (dict, key, old or _MISSING, new, section)
        self._stamped: dict[int, dict] = {}  # configurations stamped, by id (kept alive until uninstall)
        #: what stamping the client template changed, (section, key) -> (before, after): a client created
        #: while pinned copied the stamped template, and unpinning must give it back the "before" values.
        self._template_changes: dict[tuple[str, str], tuple[Any, Any]] = {}

    def summary(self) -> str:
        return "ytsaurus: docker_image + environment on every user job, cloudpickle"

    # -- install ----------------------------------------------------------------------

    def install(self, module, stamp: Stamp) -> None:
        from yt.wrapper import default_config, spec_builders
        from yt.wrapper.config import get_config

        self._stamp_config(default_config.default_config, stamp)  # every YtClient created from now on
        self._template_changes = {(t[4], t[1]): (t[2], t[3]) for t in self._undo}
        self._stamp_config(get_config(None), stamp)  # calls without a client

        adapter = self

        def make_build(original):
            def build(builder, *args, **kwargs):
                client = kwargs.get("client")
                config = get_config(client)
                if id(config) not in adapter._stamped:
                    adapter._stamp_config(config, stamp)  # a client older than the pin
                spec, *rest = original(builder, *args, **kwargs)
                adapter._check(builder, spec, stamp)
                return (spec, *rest)

            return build

        self.patches.wrap(spec_builders.UserJobSpecBuilder, "build", make_build)

    def uninstall(self) -> None:
        for target, key, old, new, _section in reversed(self._undo):
            if target.get(key, _MISSING) is not new and target.get(key, _MISSING) != new:
                continue  # changed by the user since: theirs now
            if old is _MISSING:
                target.pop(key, None)
            else:
                target[key] = old
        self._undo.clear()
        self._stamped.clear()
        self._template_changes.clear()

    def _set(self, config: dict, section: str, key: str, value: Any) -> None:
        target = config[section]
        self._undo.append((target, key, target.get(key, _MISSING), value, section))
        target[key] = value

    def _stamp_config(self, config: dict, stamp: Stamp) -> None:
        self._stamped[id(config)] = config
        inherited = False
        for (section, key), (before, after) in self._template_changes.items():
            target = config[section]
            if target.get(key, _MISSING) == after:  # copied from the stamped template: unpinning restores "before"
                self._undo.append((target, key, before, after, section))
                inherited = True
        if inherited:
            # A client created while pinned: what it did not inherit, its creator set on purpose
            # (YtClient(config={"pickling": {"framework": "dill"}})): leave that alone.
            return
        defaults = config["user_job_spec_defaults"]
        if defaults.get("docker_image") is None:
            self._set(config, "user_job_spec_defaults", "docker_image", stamp.job_image)
        else:  # the user's own default image (or the pin, copied from the template): it stays
            stamp.check_explicit(defaults["docker_image"], "YTsaurus user_job_spec_defaults")
        environment = {**stamp.env, **(defaults.get("environment") or {})}
        if environment != defaults.get("environment"):
            self._set(config, "user_job_spec_defaults", "environment", environment)

        pickling = config["pickling"]
        if pickling.get("framework") == "dill":
            self._set(config, "pickling", "framework", "cloudpickle")
        if not pickling.get("check_python_version"):
            self._set(config, "pickling", "check_python_version", True)
        if (
            pickling.get("python_binary") is None
            and pickling.get("use_local_python_in_jobs") is None
            and os.environ.get("ENVPIN_IMAGE") == stamp.image  # this kernel runs in the pinned image
        ):
            self._set(config, "pickling", "python_binary", sys.executable)

    # -- checks -------------------------------------------------------------------------

    @staticmethod
    def _check(builder, spec: dict, stamp: Stamp) -> None:
        job = getattr(builder, "_job_name", None) or getattr(builder, "_job_type", "user job")
        named = spec.get("docker_image")
        if named and named not in (stamp.image, stamp.job_image):
            stamp.check_explicit(named, f"YTsaurus {job} job")
            environment = spec.get("environment") or {}
            for key, value in stamp.env.items():  # the variables describe the pin, which this job does not run
                if environment.get(key) == value:
                    del environment[key]


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()

