"""What every benchmark starts with: its arguments, a running engine, and the image it measures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_IMAGE = "envpin-test/py311:latest"


def parse_and_prepare(
    extra: dict[str, int], flags: dict[str, str] | None = None, options: dict[str, tuple[str, str]] | None = None
) -> argparse.Namespace:
    """Parse ``--image``, integer options ``extra`` (name -> default), on/off ``flags`` (name -> help) and
    text ``options`` (name -> (default, help)); start the engine, build the image."""
    from tools.docker_engine import ensure_engine
    from tools.images import build

    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    for name, value in extra.items():
        parser.add_argument(f"--{name}", type=int, default=value)
    for name, text in (flags or {}).items():
        parser.add_argument(f"--{name}", action="store_true", help=text)
    for name, (default, text) in (options or {}).items():
        parser.add_argument(f"--{name}", default=default, help=text)
    args = parser.parse_args()
    ensure_engine()
    build(args.image)
    return args
