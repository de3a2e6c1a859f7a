"""Small helpers to drive a real kernel through jupyter_client."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

from jupyter_client.manager import AsyncKernelManager


async def run(kc, code: str, timeout: float = 30) -> dict:
    """Execute ``code``; return ``{"status", "stdout", "ename", "evalue"}``."""
    out: list[str] = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] in ("display_data", "update_display_data", "execute_result"):
            out.append(msg["content"]["data"].get("text/plain", "") + "\n")

    reply = await kc.execute_interactive(code, timeout=timeout, output_hook=hook, allow_stdin=False)
    content = reply["content"]
    return {
        "status": content["status"],
        "stdout": "".join(out),
        "ename": content.get("ename"),
        "evalue": content.get("evalue"),
    }


async def run_json(kc, expr: str, timeout: float = 30):
    """Evaluate ``expr`` in the kernel and return it, JSON round-tripped."""
    res = await run(kc, f"import json as _j; print(_j.dumps({expr}))", timeout)
    assert res["status"] == "ok", res
    return json.loads(res["stdout"].strip().splitlines()[-1])


PROBE = (
    "{'dockerenv': __import__('os').path.exists('/.dockerenv'),"
    " 'python': list(__import__('sys').version_info[:2]),"
    " 'image': __import__('os').environ.get('ENVPIN_IMAGE'),"
    " 'image_id': __import__('os').environ.get('ENVPIN_IMAGE_ID'),"
    " 'yt_image': __import__('os').environ.get('YT_JOB_DOCKER_IMAGE'),"
    " 'cwd': __import__('os').getcwd(),"
    " 'uid': __import__('os').getuid(), 'gid': __import__('os').getgid(),"
    " 'hostname': __import__('socket').gethostname()}"
)

#: A job (a lambda's source) that says where it runs: envpin.submit(JOB_PROBE) in a kernel, eval'd on a host.
JOB_PROBE = (
    "lambda: {'python': __import__('platform').python_version(),"
    " 'image_id': __import__('os').environ.get('ENVPIN_IMAGE_ID'),"
    " 'dockerenv': __import__('os').path.exists('/.dockerenv'),"
    " 'hostname': __import__('socket').gethostname()}"
)


@asynccontextmanager
async def kernel(name: str, cwd=None, env=None, **start_kw):
    """A started kernel with connected channels; shut down (container removed) on exit."""
    import os

    km = AsyncKernelManager(kernel_name=name)
    await km.start_kernel(cwd=str(cwd) if cwd else None, env={**os.environ, **(env or {})}, **start_kw)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        yield km, kc
    finally:
        kc.stop_channels()
        if km.has_kernel:
            await km.shutdown_kernel(now=False)


async def execute_until_running(kc, code: str, marker: str = "envpin-test-running", timeout: float = 30) -> str:
    """Send ``code`` and return its msg_id once it runs: it prints ``marker`` first, and we wait for that.

    For tests that act on a running cell (interrupt it, kill its kernel): the
    event itself, not a sleep that guesses how long starting takes.
    """
    import asyncio
    import time

    msg_id = kc.execute(f"print({marker!r}, flush=True)\n{code}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = await kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            break
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and marker in msg["content"]["text"]
        ):
            return msg_id
    raise AssertionError(f"the cell did not start running within {timeout:.0f}s")
