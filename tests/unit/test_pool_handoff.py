"""Unit tier: the warm pool's hand-over (a FIFO in a server folder) and what makes two launches alike.

No engine: the waiting side is ``envpin.entry.warm_kernel``'s own ``_wait``, run in a
thread of this process; the server side is ``pool.Warm``.
"""

from __future__ import annotations

import os
import stat
import threading

import pytest

from envpin.entry import warm_kernel
from testutils import wait_for


def _warm(handoff_dir):
    from envpin_provisioner.warm.pool import Warm

    return Warm(container=None, handoff_dir=handoff_dir, image_id="sha256:x", shape="s")


def test_the_handoff_folder_is_the_servers_and_its_fifo_the_kernels(tmp_path):
    from envpin.names import WARM_KERNEL_FIFO as FIFO
    from envpin_provisioner.warm.pool import make_handoff_dir

    handoff = make_handoff_dir(str(tmp_path), None)
    assert os.path.dirname(handoff) == str(tmp_path) and os.path.basename(handoff).startswith("handoff-")
    st = os.stat(os.path.join(handoff, FIFO))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert os.stat(handoff).st_uid == os.getuid()


def test_a_probe_does_not_wake_the_kernel_and_the_hand_over_does(tmp_path):
    from envpin_provisioner.warm.pool import make_handoff_dir

    handoff = make_handoff_dir(str(tmp_path), None)
    warm = _warm(handoff)
    assert not warm.waiting() and not warm.hand_over({"argv": []}, patience=0.05)  # nobody waits yet
    got = []
    reader = threading.Thread(target=lambda: got.append(warm_kernel._wait(handoff)), daemon=True)
    reader.start()
    wait_for(warm.waiting, timeout=5, what="the reader to wait", interval=0.01)  # the probe: open and close, no data
    assert warm.waiting() and not got  # probed twice, still waiting
    message = {"argv": ["-f", "/c/kernel.json", "--ext", "envpin"], "cwd": "/nb", "env": {"A": "1"}, "unset": ["B"]}
    assert warm.hand_over(message)  # right after a probe: the patience covers the reader's reopen
    reader.join(5)
    assert got == [message]


def test_a_hand_over_that_is_not_one_is_refused(tmp_path):
    from envpin_provisioner.warm.pool import make_handoff_dir

    handoff = make_handoff_dir(str(tmp_path), None)
    warm = _warm(handoff)
    failed = []

    def wait():
        try:
            warm_kernel._wait(handoff)
        except SystemExit as exc:
            failed.append(str(exc))

    reader = threading.Thread(target=wait, daemon=True)
    reader.start()
    assert warm.hand_over({"no": "argv"}, patience=5)
    reader.join(5)
    assert failed and "not a hand-over from envpin" in failed[0]


def _options(**changes):
    base = {
        "image": "sha256:1",
        "command": ["ipykernel_launcher", "-f", "/c/kernel.json"],
        "name": "x",
        "environment": {"ENVPIN_IMAGE": "py", "JPY_SESSION_NAME": "/nb/a.ipynb", "PYTHONPATH": "/opt/envpin/python"},
        "labels": {"envpin.role": "kernel", "envpin.kernel-id": "k"},
        "mounts": [{"Target": "/nb", "Source": "/nb", "Type": "bind", "ReadOnly": False}],
        "user": "1000:1000",
    }
    base.update(changes)
    return base


def test_the_shape_leaves_out_what_a_hand_over_supplies():
    from envpin_provisioner.warm.pool import shape_of

    same = shape_of(_options())
    assert shape_of(_options(command=["-m", "envpin.entry.warm_kernel", "/c/handoff-1"], name="envpin-warm-1")) == same
    assert shape_of(_options(labels={"envpin.role": "pool", "envpin.kernel-id": "k"})) == same
    mounts = _options()["mounts"] + [{"Target": "/c/handoff-1", "Source": "/c/handoff-1", "Type": "bind"}]
    assert shape_of(_options(mounts=mounts)) == same
    env = {**_options()["environment"], "JPY_SESSION_NAME": "/nb/b.ipynb", "ENVPIN_PINNED": "1"}
    assert shape_of(_options(environment=env)) == same  # the hand-over sets these


@pytest.mark.parametrize(
    "change",
    [
        {"image": "sha256:2"},
        {"user": "0:0"},
        {"mounts": [{"Target": "/other", "Source": "/other", "Type": "bind", "ReadOnly": False}]},
        {"environment": {"PYTHONPATH": "/elsewhere"}},  # read by the interpreter before any hand-over
        {"mem_limit": "1g"},
    ],
)
def test_the_shape_keeps_what_only_creating_a_container_can_set(change):
    from envpin_provisioner.warm.pool import shape_of

    assert shape_of(_options(**change)) != shape_of(_options())
