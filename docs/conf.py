"""Sphinx configuration of envpin's documentation (MyST Markdown, the furo theme).

The reference pages are generated at build time from the code by the
extension in ``_ext/envpin_docs.py``: nothing a reader sees there is written
twice.  The packages are imported from this checkout (not from whatever envpin
is installed), so the pages describe the tree they are built from.

Build: ``scripts/docs`` (HTML in ``docs/_build/html/index.html``, opens offline);
the test suite builds it too, with warnings as errors (``tests/unit/test_docs.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT / "kernel_provisioner", ROOT / "ipython_ext", HERE / "_ext"):
    sys.path.insert(0, str(path))

from envpin import __version__  # noqa: E402  (after the path is set)

project = "envpin"
author = "envpin developers"
copyright = "envpin developers"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "envpin_docs",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# attrs_block: "{#label}" before a heading labels it (the generated reference labels every item so).
myst_enable_extensions = ["attrs_block", "colon_fence", "deflist", "fieldlist"]
# Headings get anchors (so a page can link to "#the-pin-file" as it would on GitHub).
myst_heading_anchors = 4
# Messages and commands are shown as written: no curly quotes in `pip install 'ray[client]'`.
smartquotes = False

# Broken references are errors (the build runs with -W); nitpicky also checks every Python cross-reference.
nitpicky = True
# Standard library and third-party classes named in signatures: no intersphinx offline, so they are
# named, not linked.
nitpick_ignore_regex = [
    (r"py:.*", r"(concurrent|collections|typing|os|pathlib|types|docker|traitlets|IPython|distributed)\..*"),
    (r"py:.*", r"(Any|Callable|Iterable|Iterator|Mapping|Sequence|Future|Executor|optional)"),
]

autodoc_member_order = "bysource"
# A method without a docstring shows none (not the standard library's, written for another API).
autodoc_inherit_docstrings = False
autodoc_typehints = "description"
autodoc_typehints_format = "short"

html_theme = "furo"
html_title = f"envpin {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {
    "navigation_with_keys": True,
}
# Offline: no web fonts, no external scripts (furo ships its assets; MathJax is not used).
html_copy_source = False
