"""The JupyterLab extension's server half, without an engine: what a request may say, what the kernel is sent.

The endpoints are a new way into the server: every body is parsed strictly
before anything happens, and the only text that reaches the kernel's code is
a validated image name inside a Python string literal.
"""

from __future__ import annotations

import ast

import pytest
from tornado import web

from envpin.notebook.display import PROGRESS_MIME, Progress
from envpin_provisioner.lab.handlers import MAX_BODY, parse_move
from envpin_provisioner.lab.ui_moves import code_for
from envpin_provisioner.moves.activity import Activity


def test_a_good_move_request_is_parsed():
    assert parse_move(b'{"image": "envpin-test/py313:latest"}') == ("envpin-test/py313:latest", False, False)
    assert parse_move(b'{"image": "py311", "restart": true, "pull": true}') == ("py311", True, True)
    digest = "registry.example.com:5000/ml/python@sha256:" + "a" * 64
    assert parse_move(f'{{"image": "{digest}"}}'.encode())[0] == digest


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b'"envpin-test/py313"',
        b'{"image": "envpin-test/py313", "cwd": "/etc"}',
        b'{"image": "x\\u0027); import os; os.system(\\u0027id"}',
        b'{"image": "two words"}',
        b'{"image": "--restart"}',
        b'{"image": "-x"}',
        b'{"image": 3}',
        b'{"image": "a", "pull": 1}',
        b"[" * 100_000,
        b'{"image": "' + b"a" * MAX_BODY + b'"}',
    ],
)
def test_a_bad_move_request_is_a_400(body):
    with pytest.raises(web.HTTPError) as info:
        parse_move(body)
    assert info.value.status_code == 400


def test_the_kernel_is_sent_a_literal_not_code():
    code = code_for("registry.example.com/ml/py:3.11", restart=True, pull=False)
    calls = [n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Call)]
    literals = [a.value for c in calls for a in c.args if isinstance(a, ast.Constant)]
    assert literals == ["envpin", "use_image", "registry.example.com/ml/py:3.11 --restart"]
    with pytest.raises(ValueError):
        code_for("x'); import os; ('", restart=False, pull=False)


def test_the_activity_keeps_one_current_and_one_last_step_bounded():
    activity = Activity()
    activity.begin("py311\x1b[2J")
    activity.progress("pulling", "x" * 10_000, 1.7)
    step = activity.current
    assert step is not None and "\x1b" not in step.image and step.fraction == 1.0 and len(step.message) < 2100
    activity.end("error", "refused")
    assert activity.current is None and activity.last is step and step.phase == "error" and step.serial == 1


def test_a_progress_line_is_replaced_by_its_outcome(monkeypatch):
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj._repr_mimebundle_()[PROGRESS_MIME].copy(), repr(obj), obj._repr_html_()))

    def display(obj, display_id=False):
        shown.append(("display", obj._repr_mimebundle_()[PROGRESS_MIME].copy(), repr(obj), obj._repr_html_()))
        return Handle()

    import IPython.display

    monkeypatch.setattr(IPython.display, "display", display)
    progress = Progress("py311")
    progress.update("envpin: resolving py311 ...")
    progress.update("envpin: pulling py311: 2 layers, 3/10 MiB", 0.3)
    progress.finish("error", "envpin will not run image 'py311' ... add a pattern", "envpin: not moved to py311")
    assert [s[0] for s in shown] == ["display", "update", "update"]
    final = shown[-1]
    assert final[1]["state"] == "error" and "add a pattern" in final[1]["message"] and final[1]["fraction"] is None
    assert "resolving" not in final[2] + final[3] and "<progress" not in final[3]
