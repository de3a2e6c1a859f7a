"""Errors of envpin's kernel side; the server side's errors derive from :class:`EnvpinError`.

Every message is one paragraph that names the thing and the fix: in a notebook
it is all the user sees (the magics print it instead of a traceback).
"""

from __future__ import annotations


class EnvpinError(RuntimeError):
    """Base of every error envpin raises deliberately."""


class PinFileError(EnvpinError):
    """The pin file beside a notebook cannot be read (envpin never overwrites it then)."""


class EnvironmentMismatch(EnvpinError):
    """This process's environment differs from the image's in a way that breaks pickles (``--strict``)."""


class MissingDependency(EnvpinError):
    """An optional dependency a feature needs is not importable here."""


class ClusterMismatch(EnvpinError):
    """A cluster (Ray, Dask) runs another Python, pickler or engine release than the pinned image: refused.

    Checked when the client connects (``ray.init``, ``distributed.Client``) and before submissions, from what
    the cluster reports about itself, instead of tasks that fail to load or kill their workers later.

    Fix: run the cluster in the pinned image (``envpin.DaskCluster()``, or name the image to the cluster
    manager), or pin the image the cluster runs; the message names both sides.
    """
