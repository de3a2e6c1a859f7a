"""envpin in JupyterLab, the server's half: a jupyter_server extension with the REST endpoints the page asks.

The page's half is the prebuilt JupyterLab extension ``envpin`` (sources in
``jupyterlab_ext/``, shipped in the wheel under
``share/jupyter/labextensions/envpin``); this half is enabled by
``etc/jupyter/jupyter_server_config.d/envpin.json``, also in the wheel.
``handlers`` serves ``/envpin/api/...`` (reports per kernel, the images a
kernel may move to, moves), ``report`` builds what they say, ``ui_moves``
runs a move the page asked for through the kernel's own ``%use_image``.

Disable both with ``jupyter labextension disable envpin`` and
``jupyter server extension disable envpin_provisioner.lab``.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "envpin_provisioner.lab"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from envpin_provisioner.lab.handlers import LabState, handlers

    web_app = serverapp.web_app
    web_app.settings["envpin_lab"] = LabState()
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("envpin: JupyterLab endpoints at %senvpin/api/", web_app.settings["base_url"])
