"""Jobs, ``envpin run`` and a respawned script on rootless Podman, as the Podman user: prints one JSON line with
where each ran (in a Podman container, as which uid, which Python)."""

import json
import subprocess
import sys

from envpin.jobs.executor import ContainerExecutor


def probe():
    import os
    import platform

    return [os.path.exists("/run/.containerenv"), os.getuid(), platform.python_version()]


ex = ContainerExecutor("envpin-test/py311:latest", mode="container", max_workers=1)
job = ex.submit(probe).result(timeout=120)
ex.shutdown()
run = subprocess.run(
    ["envpin", "run", "--image", "envpin-test/py311:latest", "--", "python3", "-c",
     "import os; print(os.path.exists('/run/.containerenv'), os.getuid())"],
    capture_output=True, text=True,
)  # fmt: skip
with open("respawned.py", "w") as script:
    script.write(
        "import envpin, os, sys; envpin.use_image('envpin-test/py311:latest');"
        " print(os.path.exists('/run/.containerenv'), os.getuid(), sys.version.split()[0])"
    )
respawn = subprocess.run([sys.executable, "respawned.py"], capture_output=True, text=True)
print(
    json.dumps(
        {
            "job": job,
            "run": [run.returncode, run.stdout.strip(), run.stderr[-500:]],
            "respawn": [respawn.returncode, respawn.stdout.strip(), respawn.stderr[-500:]],
        }
    )
)
