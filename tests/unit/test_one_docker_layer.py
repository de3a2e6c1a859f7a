"""One Docker layer (issue 23): containers are created, and clients made, in exactly one place each.

Every container envpin makes goes through ``envpin.host.dialect.create`` (labels, proof of ownership, the
engine's dialect) so ``envpin gc`` sees it and Podman gets its options; every client comes from
``envpin.host.docker_client`` (one per engine address, one explanation of an unreachable engine).  This reads
the source, so a new ``containers.run`` or ``docker.from_env`` anywhere else fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "ipython_ext" / "envpin", ROOT / "kernel_provisioner" / "envpin_provisioner"]
ALLOWED = {
    "create": {"envpin/host/dialect.py"},  # client.containers.create, the one place
    "run": set(),  # client.containers.run: nowhere (it skips envpin.host.dialect.create)
    "from_env": {"envpin/host/docker_client.py"},
    "DockerClient": {"envpin/host/docker_client.py"},
    "APIClient": {"envpin/host/docker_client.py"},
}


def calls(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            owner = func.value
            if (
                func.attr in ("create", "run")
                and isinstance(owner, ast.Attribute)
                and owner.attr == "containers"
                or func.attr in ("from_env", "DockerClient", "APIClient")
            ):
                yield func.attr, node.lineno


def test_containers_and_clients_are_made_in_one_place_each():
    found = []
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            where = f"{package.name}/{path.relative_to(package)}"
            found += [f"{where}:{line} {what}" for what, line in calls(path) if where not in ALLOWED[what]]
    assert found == [], "make containers with envpin.host.dialect.create and clients with envpin.host.docker_client"


def test_the_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import docker\nc = docker.from_env()\nc.containers.run('x')\nc.containers.create(image='x')\n")
    assert [what for what, _ in calls(bad)] == ["from_env", "run", "create"]
