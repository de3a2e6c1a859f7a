"""Ray tasks and an actor on a local cluster started from a pinned kernel (``--ray-mode env_vars``): what each saw."""

import ray

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
job_env_vars = dict(ray.get_runtime_context().runtime_env.get("env_vars") or {})  # ray.init was stamped


@ray.remote
def where():
    import os

    return {k: os.environ.get(k) for k in ("ENVPIN_IMAGE", "ENVPIN_IMAGE_ID", "YT_JOB_DOCKER_IMAGE", "MINE")}


@ray.remote
class Where:
    def env(self):
        import os

        return os.environ.get("ENVPIN_IMAGE")


result = {
    "task": ray.get(where.remote()),
    "options": ray.get(where.options(runtime_env={"env_vars": {"MINE": "1", "ENVPIN_IMAGE": "theirs"}}).remote()),
    "actor": ray.get(Where.remote().env.remote()),
    "job": job_env_vars,
}
ray.shutdown()
