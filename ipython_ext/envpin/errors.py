"""Errors of envpin's kernel side; the server side's errors derive from :class:`EnvpinError`.

Every message is one paragraph that names the thing and the fix: in a notebook
it is all the user sees (the magics print it instead of a traceback).
"""

from __future__ import annotations


class EnvpinError(RuntimeError):
    """Base of every error envpin raises deliberately.

    Raised as itself for the refusals that need no class of their own (a bad
    argument, a request that cannot be done here); the more specific errors
    below derive from it, so ``except envpin.EnvpinError`` catches them all.

    Fix: every message names what went wrong and ends with what to do; the
    messages below are all of them.
    """


class PinFileError(EnvpinError):
    """The pin file beside a notebook cannot be read (envpin never overwrites it then).

    ``.envpin.json`` is damaged JSON, unreadable, or not a plain file (a link, a FIFO, a hard
    link: envpin never follows or opens those in a notebook folder).  The kernel does not start,
    so that the pins the file holds are not lost by a write over them.

    Fix: repair the file (it is JSON; the message names the line), make it readable, or
    delete it, or the notebook's entry in it, to start over in the kernelspec's image.
    """


class EnvironmentMismatch(EnvpinError):
    """This process's environment differs from the image's in a way that breaks pickles (``--strict``).

    ``%use_image IMAGE --strict`` in a kernel that does not run in IMAGE (a plain ipykernel on
    the host) compares this Python with the image's; a difference the measured matrix says
    breaks pickles (another Python minor, cloudpickle 3 pickles for a cloudpickle 2) is an error
    instead of a warning.

    Fix: run the notebook in the image (``envpin kernelspec install --image IMAGE`` and pick
    that kernel), or pin an image whose Python matches this one.
    """


class MissingDependency(EnvpinError):
    """An optional dependency a feature needs is not importable here.

    The host-side features (``envpin.fingerprint(image=...)``, ``ContainerExecutor`` in
    container mode, ``envpin.use_image()``) need the Docker SDK, which the kernel side does not
    import until then.

    Fix: ``pip install envpin`` (or ``pip install docker``) in the environment that runs the code.
    """


class ClusterMismatch(EnvpinError):
    """A cluster (Ray, Dask) runs another Python, pickler or engine release than the pinned image: refused.

    Checked when the client connects (``ray.init``, ``distributed.Client``) and before submissions, from what
    the cluster reports about itself, instead of tasks that fail to load or kill their workers later.

    Fix: run the cluster in the pinned image (``envpin.DaskCluster()``, or name the image to the cluster
    manager), or pin the image the cluster runs; the message names both sides.
    """
