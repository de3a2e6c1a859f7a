"""A starting envpin kernel is listed by jupyter_server without a 500 (``server_listing.listable_while_starting``).

jupyter_client puts a kernel in the server's list as its start completes, and
jupyter_server stamps ``last_activity`` only when its own start coroutine
resumes after that: ``/api/status`` or ``/api/kernels`` served in between
failed with a 500 in envpin's CI (``tests/test_server.py``'s slow-start test).
These tests put a kernel manager in the real ``MappingKernelManager``'s list
as jupyter_client does at that moment, and ask for its model.
"""

from __future__ import annotations

import datetime

import pytest
from jupyter_client import KernelManager
from jupyter_server.services.kernels.kernelmanager import MappingKernelManager, ServerKernelManager
from traitlets import TraitError

from envpin_provisioner.server_listing import listable_while_starting


def listed(km) -> MappingKernelManager:
    """A server's kernel list holding ``km`` the way ``_add_kernel_when_ready`` leaves it."""
    mkm = MappingKernelManager()
    mkm._kernels["k1"] = km
    return mkm


def test_the_gap_jupyter_server_leaves_is_closed():
    bare = listed(ServerKernelManager())
    with pytest.raises(TraitError):  # jupyter_server's own gap: last_activity unset; the handler's 500
        bare.kernel_model("k1")

    km = ServerKernelManager()
    listable_while_starting(km)
    model = listed(km).kernel_model("k1")
    assert model["execution_state"] == "starting"
    assert datetime.datetime.fromisoformat(model["last_activity"].replace("Z", "+00:00")).tzinfo is not None


def test_a_kernel_that_has_its_fields_keeps_them():
    km = ServerKernelManager()
    then = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    km.last_activity, km.execution_state = then, "idle"  # a restart: jupyter_server set them before
    listable_while_starting(km)
    assert (km.last_activity, km.execution_state) == (then, "idle")


def test_a_plain_kernel_manager_is_left_alone():
    km = KernelManager()  # nbclient, papermill: no server, no such fields
    listable_while_starting(km)
    assert "last_activity" not in km.trait_names()
    listable_while_starting(None)
