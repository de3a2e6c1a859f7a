"""The ``envpin`` command.

    envpin kernelspec install --image IMAGE [--name NAME] [--display-name TEXT] [--user | --prefix PATH]
    envpin kernelspec install            # the generic "Containerized Python" kernel
    envpin gc [--other-hosts] [--dry-run]
    envpin doctor                                        # what works, what to fix
    envpin run --image IMAGE -- python script.py ARGS   # the script runs inside IMAGE
    envpin launch [--image IMAGE] -f CONNECTION_FILE   # what a kernelspec's argv runs

Errors envpin raises on purpose are printed as their one-paragraph message,
without a traceback, and exit with status 2; the message is escaped onto one
line (``envpin.printable``) because it may quote what an image, a pin or a
job said.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from envpin import printable
from envpin_provisioner.errors import EnvpinError
from envpin_provisioner.images import pulling


def _parse_config(pairs: list[str]) -> dict:
    config = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise EnvpinError(f"--config '{pair}' is not KEY=VALUE (e.g. --config network_mode=none).")
        try:
            config[key] = json.loads(value)
        except ValueError:
            config[key] = value
    return config


def _kernelspec_install(args) -> int:
    from envpin_provisioner.cli import kernelspec
    from envpin_provisioner.options import check_options
    from envpin_provisioner.provisioner import EnvpinProvisioner

    config = _parse_config(args.config)
    check_options(EnvpinProvisioner, dict(config, image=args.image or "x"), None)
    path = kernelspec.install(
        args.image,
        name=args.name,
        display_name=args.display_name,
        user=args.user,
        prefix=args.prefix,
        config=config,
    )
    print(f"Installed kernelspec in {path}")
    return 0


def _gc(args) -> int:
    from envpin_provisioner import engine
    from envpin_provisioner.kernel import ownership

    client = engine.shared(args.engine or None).client
    removed = ownership.collect_garbage(client, other_hosts=args.other_hosts, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"envpin gc: {verb} {len(removed)} orphaned container(s)" + (f": {', '.join(removed)}" if removed else ""))
    return 0


def _doctor(args) -> int:
    from envpin_provisioner.cli import doctor

    if args.engine:  # every check of this run talks to that engine, as if the server's environment named it
        os.environ["DOCKER_HOST"] = args.engine
    return doctor.main()


def _run(args) -> int:
    from envpin.host import respawn

    argv = [a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise EnvpinError("envpin run needs a command: envpin run --image IMAGE -- python script.py ARGS")
    return respawn.run(args.image, argv)


def _launch(args) -> int:
    from envpin_provisioner.cli import launch

    return launch.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="envpin", description="Run notebooks and their jobs in one container image.")
    sub = parser.add_subparsers(dest="command", required=True)

    ks = sub.add_parser("kernelspec", help="manage Containerized Python kernelspecs")
    ks_sub = ks.add_subparsers(dest="kernelspec_command", required=True)
    inst = ks_sub.add_parser("install", help="install a kernelspec that runs ipykernel in IMAGE")
    inst.add_argument("--image", help="image reference; omit for the generic kernel using the configured default")
    inst.add_argument("--name", help="kernelspec name (default: envpin-<image>)")
    inst.add_argument("--display-name", help='name shown in JupyterLab (default: "Containerized Python (IMAGE)")')
    where = inst.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels (e.g. sys.prefix of a venv)")
    inst.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra provisioner option stored in the kernelspec (e.g. network_mode=none); repeatable",
    )
    inst.set_defaults(func=_kernelspec_install)

    gc = sub.add_parser("gc", help="remove this user's envpin containers whose owning process is gone")
    gc.add_argument("--other-hosts", action="store_true", help="also remove those owned by other hosts")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument("--engine", help="the engine to clean (ssh://USER@HOST, tcp://HOST:2376, unix:///PATH)")
    gc.set_defaults(func=_gc)

    doc = sub.add_parser("doctor", help="check the engine, the envpin kernelspecs and their images")
    doc.add_argument("--engine", help="the engine to check (ssh://USER@HOST, tcp://HOST:2376, unix:///PATH)")
    doc.set_defaults(func=_doctor)

    run = sub.add_parser("run", help="run a command inside a container of IMAGE, wired to this terminal")
    run.add_argument("--image", required=True, help="image reference, id or alias")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    run.set_defaults(func=_run)

    la = sub.add_parser("launch", help="run a containerized kernel in the foreground (kernelspec argv)")
    la.add_argument("-f", dest="connection_file", required=True, help="connection file written by the client")
    la.add_argument("--image", help="image (default: $ENVPIN_IMAGE, else ubuntu-22.04-py3)")
    la.add_argument("--pull-policy", default="if-missing", choices=pulling.PULL_POLICIES)
    la.add_argument("--network", default="bridge", help="network mode of the container")
    la.add_argument("--python", default="python3", help="Python interpreter inside the image")
    la.add_argument("--launch-timeout", type=float, default=60.0)
    la.set_defaults(func=_launch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EnvpinError as exc:
        print(f"envpin: {printable.one_line(exc)}", file=sys.stderr)  # may quote an image, a pin or a job
        return 2


if __name__ == "__main__":
    sys.exit(main())
