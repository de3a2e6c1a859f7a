"""A pinned kernel on the test Ray cluster (tests/test_ray_e2e.py), in steps: connect (with ``probe()``, what a
task sees of where it runs), a task, tasks and an actor with timings, and a submitted job."""

# ruff: noqa: E402  (each cell imports what it uses when it runs)

# %% connect
import os
import sys
import time


def probe():
    import ray as _ray

    marker = open("/opt/envpin-marker").read().strip() if os.path.exists("/opt/envpin-marker") else None
    return {
        "exe": sys.executable,
        "ray_at": _ray.__file__,
        "node": _ray.get_runtime_context().get_node_id(),
        "podman": os.path.exists("/run/.containerenv"),
        "image_id": os.environ.get("ENVPIN_IMAGE_ID"),
        "image": os.environ.get("ENVPIN_IMAGE"),
        "marker": marker,
    }


import ray

CLIENT = ...  # the cluster's Ray Client address
# Ray's client proxier now and then fails to start the per-client server it forks (ray-project/ray#63202, a
# race with gRPC's poller: "Starting Ray client server failed"); a real user retries, and so does the test.
for attempt in range(3):
    try:
        ray.init(CLIENT)
        break
    except ConnectionError:  # what a failed client-server start raises (ConnectionAbortedError)
        if attempt == 2:
            raise
        ray.shutdown()
        time.sleep(2)

# %% task


@ray.remote
def task():
    return probe()


# %% tasks


@ray.remote
class Actor:
    def where(self):
        return probe()


timings = {}
t = time.monotonic()
first = ray.get(task.remote())
timings["first task"] = time.monotonic() - t
t = time.monotonic()
warm = ray.get(task.remote())
timings["warm task"] = time.monotonic() - t
optioned = ray.get(task.options(num_cpus=0.5, runtime_env={"env_vars": {"MINE": "1"}}).remote())
actor = Actor.remote()
from_actor = ray.get(actor.where.remote())
on_b = ray.get(task.options(resources={"node_b": 0.5}).remote())
on_head = ray.get(task.options(num_cpus=2).remote())
ray.shutdown()

# %% job
import shlex

from ray.job_submission import JobSubmissionClient

DASHBOARD = ...  # the cluster's dashboard (job server) URL
jobs = JobSubmissionClient(DASHBOARD)
code = (
    "import json, os, sys, ray; ray.init(); f = ray.remote(lambda: sys.executable); "
    "print(json.dumps([sys.executable, os.path.exists('/run/.containerenv'), os.environ.get('ENVPIN_IMAGE_ID'), "
    "ray.get(f.remote())]))"
)
job_id = jobs.submit_job(entrypoint=f"python -c {shlex.quote(code)}")
for _ in range(480):
    if jobs.get_job_status(job_id).is_terminal():
        break
    time.sleep(0.5)
job = {"status": str(jobs.get_job_status(job_id)), "logs": jobs.get_job_logs(job_id)}
