"""A kernel's life on rootless Podman, as the Podman user (tests/podman/test_podman.py): start, run, interrupt,
restart, shut down; prints one JSON line with what the kernel said of itself before and after the restart."""

import json
import os
import time

import jupyter_client

km = jupyter_client.KernelManager(kernel_name="pm-py311")
km.start_kernel(cwd=os.getcwd())
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=120)


def run(code, timeout=60):
    out = []

    def hook(m):
        if m["msg_type"] == "stream":
            out.append(m["content"].get("text", ""))

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply["content"], "".join(out)


probe = (
    "import json, os, platform; open('written-by-kernel.txt', 'w').write('x'); print(json.dumps({"
    "'uid': os.getuid(), 'containerenv': os.path.exists('/run/.containerenv'),"
    " 'dockerenv': os.path.exists('/.dockerenv'), 'python': platform.python_version(), 'cwd': os.getcwd(),"
    " 'image': os.environ.get('ENVPIN_IMAGE'), 'pid1': open('/proc/1/cmdline').read().split(chr(0))}))"
)
first = json.loads(run(probe)[1])
first["kernel_id"], first["transport"] = km.kernel_id, km.transport
first["container"] = km.provisioner._container.id
# Interrupt: a cell that would sleep a minute comes back interrupted within seconds.  It is interrupted once it
# runs (it says so first), not after a guess at how long starting it takes.
msg_id = kc.execute("print('envpin-test-running', flush=True); import time; time.sleep(60)")
while True:
    msg = kc.get_iopub_msg(timeout=30)
    if (
        msg["parent_header"].get("msg_id") == msg_id
        and msg["msg_type"] == "stream"
        and "envpin-test-running" in msg["content"]["text"]
    ):
        break
t = time.monotonic()
km.interrupt_kernel()
while True:
    msg = kc.get_shell_msg(timeout=30)
    if msg["msg_type"] == "execute_reply":
        break
first["interrupted"] = [msg["content"]["status"], msg["content"].get("ename"), round(time.monotonic() - t, 2)]
km.restart_kernel(now=False)
kc.wait_for_ready(timeout=120)
first["after_restart"] = json.loads(run(probe)[1])
first["restarted_container"] = km.provisioner._container.id
km.shutdown_kernel(now=False)
print(json.dumps(first))
