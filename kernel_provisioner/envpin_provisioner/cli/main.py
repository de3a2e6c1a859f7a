"""The ``envpin`` command.

    envpin kernelspec install --image IMAGE [--name NAME] [--display-name TEXT]
                              [--user | --sys-prefix | --prefix PATH] [--config KEY=VALUE ...] [--no-check]
    envpin kernelspec install            # the generic "Containerized Python" kernel
    envpin kernelspec list | remove NAME
    envpin gc [--other-hosts] [--dry-run]
    envpin doctor                                        # what works, what to fix
    envpin run --image IMAGE -- python script.py ARGS   # the script runs inside IMAGE
    envpin launch [--image IMAGE] [--config KEY=VALUE] -f CONNECTION_FILE   # what a kernelspec's argv runs

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


def parse_config(pairs: list[str]) -> dict:
    """``--config KEY=VALUE`` pairs as provisioner options (a VALUE that is JSON is read as JSON)."""
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

    config = parse_config(args.config)
    check_options(EnvpinProvisioner, dict(config, image=args.image or "x"), None, where="install")
    name = args.name or (kernelspec.default_name(args.image) if args.image else kernelspec.STATIC_KERNELSPEC)
    prefix = sys.prefix if args.sys_prefix else args.prefix
    target = kernelspec.destination(name, user=args.user, prefix=prefix)
    hidden_by = kernelspec.shadowing(name, target)
    if hidden_by:  # checked before anything is written: Jupyter would never use what this installs
        where = "--user" if args.user else f"--prefix {prefix}" if prefix else "the system folder"
        raise EnvpinError(
            f"Jupyter would not use a kernelspec '{name}' installed in {os.path.dirname(target)} ({where}): the "
            f"one in {hidden_by} comes first on its kernel path (in a virtual environment Jupyter looks in the "
            "environment's own folder before yours). Nothing was installed.",
            fix="Install it where Jupyter looks first: the same command with --sys-prefix instead of --user; "
            "or give it a name of its own: --name NAME.",
        )
    if args.image and not args.no_check:
        print(f"envpin: {kernelspec.check_image(args.image, config.get('engine') or None)}")
    path = kernelspec.install(
        args.image,
        name=name,
        display_name=args.display_name,
        user=args.user,
        prefix=prefix,
        config=config,
    )
    print(f"Installed kernelspec {name} in {path}")
    if not kernelspec.in_kernel_path(path):
        print(f"envpin: note: Jupyter does not look in {os.path.dirname(path)} (add it to JUPYTER_PATH to use it)")
    return 0


def _kernelspec_list(args) -> int:
    from envpin_provisioner.cli import kernelspec

    specs = kernelspec.envpin_specs()
    if not specs:
        print("No envpin kernelspecs. Install one: envpin kernelspec install --sys-prefix [--image IMAGE]")
        return 0
    for spec in specs:
        image = spec["image"] or "(the configured default image)"
        options = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(spec["config"].items()))
        state = "" if spec["used"] else "  [not used: an earlier folder has a kernelspec of this name]"
        print(f'{spec["name"]}  "{printable.one_line(spec["display_name"], 200)}"  image {image}{state}')
        print(f"    {spec['path']}" + (f"\n    options: {printable.one_line(options, 500)}" if options else ""))
    return 0


def _kernelspec_remove(args) -> int:
    from envpin_provisioner.cli import kernelspec

    removed, now = kernelspec.remove(args.name)
    print(f"Removed kernelspec {args.name} from {removed}")
    if now:
        print(f"envpin: Jupyter now uses the kernelspec {args.name} in {now}")
    return 0


def _gc(args) -> int:
    from envpin_provisioner import engine
    from envpin_provisioner.kernel import ownership

    shared = engine.shared(args.engine or None)
    report: list[str] = []
    folders: list[str] = []  # over SSH: the collected kernels' folders on that host
    on_remove = None
    if shared.address.startswith("ssh://"):
        from envpin_provisioner.remote import ssh_kernel

        def on_remove(container) -> None:
            folder = ssh_kernel.folder_of(container)
            if folder:
                folders.append(folder)

    removed = ownership.collect_garbage(
        shared.client, other_hosts=args.other_hosts, dry_run=args.dry_run, report=report, on_remove=on_remove
    )
    verb = "would remove" if args.dry_run else "removed"
    print(f"envpin gc: {verb} {len(removed)} orphaned container(s)" + (":" if removed else ""))
    for line in report:
        print(f"  {line}")
    if folders:
        gone = ssh_kernel.remove_folders(shared.address, folders)
        print(f"envpin gc: removed {len(gone)} kernel folder(s) on {shared.address}: {' '.join(gone)}")
    if not args.engine:
        from envpin_provisioner.cli.doctor import envpin_kernelspecs, other_engine

        others = sorted({o for spec in envpin_kernelspecs().values() if (o := other_engine(spec, shared.address))})
        for other in others:  # collected one engine per run: say where else this machine's kernels run
            print(f"envpin gc: kernelspecs here also run kernels on {other}: envpin gc --engine {other}")
    return 0


def _doctor(args) -> int:
    from envpin_provisioner.cli import doctor

    if args.engine:  # every check of this run talks to that engine, as if the server's environment named it
        os.environ["DOCKER_HOST"] = args.engine
    return doctor.main(only_default_engine=bool(args.engine))


def _run(args) -> int:
    from envpin.host import respawn

    argv = [a for a in args.argv if a != "--"] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise EnvpinError("envpin run needs a command: envpin run --image IMAGE -- python script.py ARGS")
    return respawn.run(args.image, argv)


def _launch(args) -> int:
    from envpin_provisioner.cli import launch

    return launch.main(args)


def _option_help(name: str) -> str:
    """The provisioner option's own help (its default included), as one line of ``--help``."""
    from envpin_provisioner.options import ProvisionerOptions

    text = " ".join(str(ProvisionerOptions.class_traits()[name].help).split())
    return text.replace("%", "%%")  # argparse formats help with %


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
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python environment (a venv)")
    where.add_argument("--prefix", help="install under PREFIX/share/jupyter/kernels")
    inst.add_argument(
        "--no-check",
        action="store_true",
        help="do not check that the engine (the one --config engine=URL names, else the default) has the image or can pull it",
    )
    inst.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra provisioner option stored in the kernelspec (e.g. network_mode=none); repeatable",
    )
    inst.set_defaults(func=_kernelspec_install)
    ls = ks_sub.add_parser("list", help="list the envpin kernelspecs Jupyter finds, and the ones it does not use")
    ls.set_defaults(func=_kernelspec_list)
    rm = ks_sub.add_parser("remove", help="remove an envpin kernelspec (the one Jupyter uses)")
    rm.add_argument("name", help="kernelspec name (envpin kernelspec list)")
    rm.set_defaults(func=_kernelspec_remove)

    gc = sub.add_parser("gc", help="remove this user's envpin containers whose owning process is gone")
    gc.add_argument("--other-hosts", action="store_true", help="also remove those owned by other hosts")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    gc.add_argument("--engine", help="the engine to clean (ssh://USER@HOST, tcp://HOST:2376, unix:///PATH)")
    gc.set_defaults(func=_gc)

    doc = sub.add_parser(
        "doctor",
        help="check the engine, the envpin kernelspecs and their images (each on the engine it names)",
    )
    doc.add_argument(
        "--engine",
        help="check only this engine and the kernelspecs that run on it (ssh://USER@HOST, tcp://HOST:2376, "
        "unix:///PATH)",
    )
    doc.set_defaults(func=_doctor)

    run = sub.add_parser(
        "run", help="run a command inside a container of IMAGE, wired to this terminal (a terminal there too)"
    )
    run.add_argument("--image", required=True, help="image reference, id or alias")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    run.set_defaults(func=_run)

    la = sub.add_parser("launch", help="run a containerized kernel in the foreground (kernelspec argv)")
    la.add_argument("-f", dest="connection_file", required=True, help="connection file written by the client")
    # No defaults here: an option not given is the provisioner's (ProvisionerOptions: $ENVPIN_*, then its default).
    la.add_argument("--image", help=_option_help("image"))
    la.add_argument("--pull-policy", choices=pulling.PULL_POLICIES, help=_option_help("pull_policy"))
    la.add_argument("--network", dest="network_mode", help=_option_help("network_mode"))
    la.add_argument("--python", help=_option_help("python"))
    la.add_argument("--launch-timeout", type=float, help=_option_help("launch_timeout"))
    la.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other provisioner option, as in a kernelspec (e.g. mem_limit=4g); repeatable",
    )
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
