"""The programs tests run inside kernels (tests/kernel_programs/, loaded by ``testutils.program``).

ruff checks each file as a whole; here, that each step a test sends is valid
Python on its own once its parameters are set, and that ``program`` refuses a
step whose parameters are not exactly the ones it declares.
"""

from __future__ import annotations

import re

import pytest

from testutils import PROGRAMS, program

CELL = re.compile(r"^# %% ([\w-]+)", re.M)
PARAMETER = re.compile(r"^([A-Z][A-Z0-9_]*) = \.\.\.", re.M)


def steps() -> list[tuple[str, str | None]]:
    """Every (program, cell) a test can ask for: each cell of a file of cells, else the whole file."""
    found: list[tuple[str, str | None]] = []
    for path in sorted(PROGRAMS.glob("*.py")):
        cells = CELL.findall(path.read_text(encoding="utf-8"))
        found += [(path.stem, c) for c in cells] or [(path.stem, None)]
    return found


@pytest.mark.parametrize("name, cell", steps(), ids=[f"{n}:{c}" if c else n for n, c in steps()])
def test_each_step_is_python_on_its_own(name, cell):
    text = (PROGRAMS / f"{name}.py").read_text(encoding="utf-8")
    if cell:
        text = text.split(f"# %% {cell}\n", 1)[1].split("\n# %% ", 1)[0]
    params = {p: "value" for p in PARAMETER.findall(text)}
    source = program(name, cell, **params)
    assert "= ..." not in source
    compile(source, f"{name}.py:{cell}", "exec")


def test_parameters_must_be_exactly_the_declared_ones():
    with pytest.raises(TypeError, match=r"takes the parameters \['DASHBOARD'\], not \[\]"):
        program("ray_cluster", "job")
    with pytest.raises(TypeError, match=r"not \['DASHBOARD', 'EXTRA'\]"):
        program("ray_cluster", "job", DASHBOARD="http://x", EXTRA=1)
    with pytest.raises(KeyError, match="no cell 'nope'"):
        program("ray_cluster", "nope")
    assert "DASHBOARD = 'http://x'" in program("ray_cluster", "job", DASHBOARD="http://x")
