"""A Ray job submitted to a local head with the job server: the head first (before the pin), then the submission
and what the job server recorded and made of it."""

# %% head
import time

import ray
from ray.job_submission import JobSubmissionClient

ctx = ray.init(num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)

# %% submit
jobs = JobSubmissionClient("http://" + ctx.dashboard_url)
job = jobs.submit_job(entrypoint="python -c 'print(1)'", runtime_env={"env_vars": {"MINE": "1"}})
recorded = jobs.get_job_info(job).runtime_env
deadline = time.time() + 60
while jobs.get_job_status(job) not in ("FAILED", "SUCCEEDED", "STOPPED") and time.time() < deadline:
    time.sleep(0.5)
info = jobs.get_job_info(job)
outcome = {"status": str(info.status), "message": info.message or ""}
