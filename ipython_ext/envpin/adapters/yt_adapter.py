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
  its interpreter's path (the job runs the very same file);
* ``pickling.ignore_system_modules``: also then, so the modules archive holds
  the notebook's own code only (the image has the standard library and
  site-packages; shipping them made each operation upload ~10 MB, and made a
  job under another Python die in this Python's ``threading.py`` before the
  version check could speak);
* the jobs' environment carries what operations started *inside* jobs need
  to keep the image (see ``job_environment``).

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

import platform
import sys
from typing import Any

from envpin.adapters.base import LibraryAdapter
from envpin.internals import YTSAURUS
from envpin.session import state
from envpin.session.stamping import Stamp


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
        self._pickle_verdicts: dict[tuple[str, str], Any] = {}  # (image, pickler) -> policy.Verdict

    def summary(self) -> str:
        return "ytsaurus: docker_image + environment on every user job, cloudpickle"

    # -- install ----------------------------------------------------------------------

    def install(self, module, stamp: Stamp) -> None:
        get_config = YTSAURUS.get("get_config")
        self._stamp_config(YTSAURUS.get("default_config"), stamp)  # every YtClient created from now on
        self._template_changes = {(t[4], t[1]): (t[2], t[3]) for t in self._undo}
        self._stamp_config(get_config(None), stamp)  # calls without a client

        adapter = self

        def make_build(original):
            def build(builder, *args, **kwargs):
                client = kwargs.get("client")
                config = get_config(client)
                if id(config) not in adapter._stamped:
                    adapter._stamp_config(config, stamp)  # a client older than the pin
                adapter._preflight(builder, config, stamp)  # before anything is pickled or uploaded
                spec, *rest = original(builder, *args, **kwargs)
                adapter._check(builder, spec, stamp)
                return (spec, *rest)

            return build

        self.patches.wrap(*YTSAURUS.site("job_spec_build"), make_build)

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
        self._pickle_verdicts.clear()
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

        pickling = config["pickling"]
        if pickling.get("framework") == "dill":
            self._set(config, "pickling", "framework", "cloudpickle")
        if not pickling.get("check_python_version"):
            self._set(config, "pickling", "check_python_version", True)
        if (
            pickling.get("python_binary") is None
            and pickling.get("use_local_python_in_jobs") is None
            and state.runs_in_image(stamp.image)  # this kernel runs in the pinned image
        ):
            self._set(config, "pickling", "python_binary", sys.executable)
        if (
            not pickling.get("ignore_system_modules")
            and state.runs_in_image(stamp.image)  # the jobs' image has this very stdlib and site-packages
        ):
            # Ship only the notebook's own modules: the image has the rest. Shipping the stdlib also hides
            # a wrong image: a job under another Python would die importing this Python's threading.py
            # before the client's check_python_version could say what is wrong.
            self._set(config, "pickling", "ignore_system_modules", True)

        # Last, once the pickling choice is made: the jobs' environment, with the patch that carries
        # all of this into clients created inside the jobs (nested operations).
        inherited_env = job_environment(stamp, defaults.get("docker_image") or stamp.job_image, pickling)
        environment = {**inherited_env, **(defaults.get("environment") or {})}
        if environment != defaults.get("environment"):
            self._set(config, "user_job_spec_defaults", "environment", environment)

    # -- checks -------------------------------------------------------------------------

    def _preflight(self, builder, config: dict, stamp: Stamp) -> None:
        """Refuse a job whose pickle the pinned image is known not to load (``envpin.compat.policy``).

        Only for a kernel outside the image (a kernel in it pickles with the
        image's own Python and pickler) and a job that runs in the pin (a job
        naming its own image gets the client's ``check_python_version``).
        The client's version check would refuse a different Python too, but
        only once the job runs on the cluster, after uploads and scheduling;
        this says it at the cell, with what was measured, and also covers
        the pickler release, which the client does not compare.  Judged once
        per (image, pickler): every user job of every operation comes here.
        """
        if state.runs_in_image(stamp.image, stamp.job_image):
            return
        named = YTSAURUS.attr(builder, "job_spec", {}).get("docker_image")
        if named and named not in (stamp.image, stamp.job_image):
            return
        from envpin.compat import fingerprints, policy
        from envpin.jobs.envelope import EnvelopeMismatch

        framework = str(config["pickling"].get("framework") or "cloudpickle")
        verdict = self._pickle_verdicts.get((stamp.image, framework))
        if verdict is None:
            theirs = fingerprints.fingerprint(image=stamp.image)  # cached on disk by image id
            ours = policy.Side(
                platform.python_implementation(),
                f"{sys.version_info[0]}.{sys.version_info[1]}",
                framework,
                fingerprints.version_of(framework),
            )
            verdict = policy.judge(ours, policy.Side.of_fingerprint(theirs, framework))
            self._pickle_verdicts[(stamp.image, framework)] = verdict
        job = YTSAURUS.attr(builder, "job_name", None) or YTSAURUS.attr(builder, "job_type", "user")
        policy.enforce(
            verdict,
            policy.resolve_mode(None, stamp.envelope),
            EnvelopeMismatch,
            f"this YTsaurus operation: its {job} job's function, pickled here, would be loaded in '{stamp.image}'",
            f"Nothing was submitted. Run the notebook in the image (envpin kernelspec install --image {stamp.image}, "
            "then pick that kernel), or pin an image with this kernel's Python.",
            doing="Refusing to submit",
        )

    @staticmethod
    def _check(builder, spec: dict, stamp: Stamp) -> None:
        job = YTSAURUS.attr(builder, "job_name", None) or YTSAURUS.attr(builder, "job_type", "user job")
        named = spec.get("docker_image")
        if named and named not in (stamp.image, stamp.job_image):
            stamp.check_explicit(named, f"YTsaurus {job} job")
            environment = spec.get("environment") or {}
            for key, value in stamp.env.items():  # the variables describe the pin, which this job does not run
                if environment.get(key) == value:
                    del environment[key]
            if environment.get("YT_BASE_LAYER") in (stamp.image, stamp.job_image):  # nor should its nested jobs
                environment.pop("YT_BASE_LAYER")
                environment.pop("YT_CONFIG_PATCHES", None)


#: How many levels of YT_CONFIG_PATCHES are chained (see job_environment).
NESTING_DEPTH = 4


def job_environment(stamp: Stamp, image: str, pickling: dict) -> dict[str, str]:
    """The variables every job gets, so that operations started *inside* jobs keep the pinned image.

    envpin is not loaded in jobs, so what nested operations inherit must travel
    in what ``ytsaurus-client`` itself reads there (0.13.x, read in its source):

    * the job's global configuration is the submitting client's (the job's
      ``config_dump``), stamp included: operations started with the
      module-level API (``yt.run_map``), or with a client made from that
      configuration, keep the image, variables and pickler at any depth;
    * a *new* ``YtClient()`` starts from the package defaults and reads only a
      few "forced" variables, among them ``YT_BASE_LAYER`` (its
      ``operation_base_layer``), which it writes as ``docker_image`` into every
      job of its operations that names no image of its own.  envpin sets it to
      the pinned image (when the reference is lowercase: the client lowercases
      it), and it then travels on in that client's configuration, so
      module-level calls further down keep the image too.  Such a client's
      jobs do not get the ``ENVPIN_*`` variables, and a new client inside one
      of *them* has nothing left to read: the limit of a client that takes no
      job defaults from the environment;
    * ``YT_CONFIG_PATCHES`` (applied by the client to its global configuration
      at import): for programs a job runs that import the client themselves
      (a vanilla task's script), the same defaults and pickling, chained
      ``NESTING_DEPTH`` levels deep (a patch cannot contain itself).
    """
    import yt.yson as yson

    base = dict(stamp.env)
    if image == image.lower():
        base["YT_BASE_LAYER"] = image
    carried = {
        k: pickling[k] for k in ("framework", "check_python_version", "python_binary") if pickling.get(k) is not None
    }
    patch: str | None = None
    for _ in range(NESTING_DEPTH):
        environment = dict(base)
        if patch is not None:
            environment["YT_CONFIG_PATCHES"] = patch
        level = {"user_job_spec_defaults": {"docker_image": image, "environment": environment}, "pickling": carried}
        patch = yson.dumps(level, yson_format="text").decode()
    return {**base, "YT_CONFIG_PATCHES": patch or ""}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()
