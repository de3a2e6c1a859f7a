"""How envpin starts a Python module without importing anything from the folder it starts in.

``python -m pkg`` puts the working folder first on ``sys.path``, and
``python script.py`` the script's folder.  envpin starts its processes in
folders a kernel or a job can write (the notebook folder, a pool's folder, a
job's working folder): a planted ``envpin/``, ``ipykernel/`` or
``envpin_provisioner/`` there would run instead of the real one, in a warm
container that later becomes another notebook's kernel, or on the host as
the client's user (the fallback launcher).

``python -I`` would close that but also drops ``PYTHONPATH``, which is how
envpin's read-only package reaches a container (and the image's own
``PYTHONPATH``), and ``-P`` exists only from Python 3.11.  So every process
envpin starts is::

    python -c BOOTSTRAP MODULE ARGS...

``-c`` adds ``''`` (the working folder, looked up at each import) as
``sys.path[0]`` after ``site`` has run; the bootstrap's first statement
removes it, and the working folder itself wherever it is on the path (an
empty ``PYTHONPATH`` entry, as ``ENV PYTHONPATH=$PYTHONPATH:/app`` leaves in
many images, means the working folder), then runs ``MODULE`` as ``python -m`` would (``runpy``, as
``__main__``, ``sys.argv[0]`` its file).  ``site`` itself never looks in the
working folder (``sitecustomize``/``usercustomize`` and ``.pth`` files are
found only in the site folders and on ``PYTHONPATH``), so nothing planted
there runs.  A program that wants the working folder on its path adds it
itself after its imports, as IPython does for the notebook's namespace.

Standard library only: the server side builds these command lines, the
kernel side (``envpin.entry.pid1``, job workers) too.
"""

from __future__ import annotations

#: The ``-c`` program: drop the working folder from the path, then run sys.argv[1] as ``python -m`` would.
#: (A Python environment that lives *below* a kernel-writable folder, a project's ``.venv`` inside the
#: notebook folder, stays on the path: whoever can write it owns that environment, whatever envpin does.)
#: A module that is not there is reported in ``python -m``'s own words (one line, no traceback), which
#: the provisioner's start errors recognise ("No module named ipykernel_launcher").
BOOTSTRAP = (
    "import os, sys\n"
    "cwd = os.getcwd()\n"
    "sys.path[:] = [p for p in sys.path if p and p != cwd]\n"
    "import importlib.util, runpy\n"
    "del sys.argv[0]\n"
    "try: found = importlib.util.find_spec(sys.argv[0])\n"
    "except ModuleNotFoundError: found = None\n"
    "if found is None: sys.exit(sys.executable + ': No module named ' + sys.argv[0])\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def argv(python: str, module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args...`` with nothing imported from the working folder."""
    return [python, "-c", BOOTSTRAP, module, *args]


def entrypoint(python: str) -> list[str]:
    """``argv`` split for ``containers.create``: the entrypoint part (the module and its arguments follow)."""
    return [python, "-c", BOOTSTRAP]
