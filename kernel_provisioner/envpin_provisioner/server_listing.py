"""How a starting kernel looks in jupyter_server's kernel list (``/api/kernels``, ``/api/status``).

Not a jupyter_client hook: the provisioner calls it when it is made, on the
kernel manager that owns it (its ``parent``).
"""

from __future__ import annotations

import datetime
from typing import Any

from traitlets import TraitError


def listable_while_starting(kernel_manager: Any) -> None:
    """Give a jupyter_server kernel manager its activity fields now, before its kernel is listed.

    jupyter_client adds a starting kernel to the server's list as its start
    completes (``MultiKernelManager._add_kernel_when_ready``), and
    jupyter_server sets ``last_activity`` and
    ``execution_state`` only when its own start coroutine resumes after that.
    A request served in between (JupyterLab polls ``/api/kernels`` and
    ``/api/sessions``; ``/api/status``) reads ``last_activity`` unset and
    fails with a 500 (the same gap as jupyter-server/enterprise_gateway#1395;
    envpin's CI hit it while a kernel started).  The values set here are the
    ones jupyter_server sets a moment later, and it overwrites them then; a
    kernel manager that already has them (a restart) or has no such fields
    (nbclient, papermill) is left as it is.  With ``use_pending_kernels`` the
    kernel is listed before its provisioner exists: that earlier gap is
    jupyter_server's to close.
    """
    has_trait = getattr(kernel_manager, "has_trait", None)
    if has_trait is None or not has_trait("last_activity"):
        return
    try:
        if kernel_manager.last_activity is not None:
            return
    except TraitError:  # unset, and None is not a datetime: what jupyter_server's kernel_model trips on
        pass
    kernel_manager.last_activity = datetime.datetime.now(datetime.timezone.utc)
    if getattr(kernel_manager, "execution_state", "") is None:
        kernel_manager.execution_state = "starting"
