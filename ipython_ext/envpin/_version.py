"""envpin's version: the one place it is written (pyproject.toml and both packages read it from here)."""

__version__ = "0.1.0"
