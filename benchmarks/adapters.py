"""What stamping costs a Ray driver: task submission with the Ray adapter installed vs without.

Same process, same local Ray cluster, alternating rounds (so drift on a
noisy machine hits both sides): a round submits ``--tasks`` tiny tasks and
waits for them, once with the session pinned (every ``.remote()`` goes
through envpin's wrapper, which merges the stamp into the task's
runtime_env and reuses Ray's serialized runtime_env info from a cache) and
once after ``%unload_ext envpin`` put Ray's functions back.  Both sides carry
the same ``env_vars`` (the baseline passes them by hand), so the difference is
envpin's wrapper alone.  Printed: median throughput per side and the ratio
(target: stamped >= 0.8x of plain).

    .venv/bin/python benchmarks/adapters.py [--tasks 2000] [--rounds 5]
"""

from __future__ import annotations

import statistics
import time

from _setup import DEFAULT_IMAGE, parse_and_prepare


def main() -> None:
    args = parse_and_prepare({"tasks": 2000, "rounds": 5})
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)

    @ray.remote
    def tiny(i):
        return i

    env = {"ENVPIN_IMAGE": args.image, "YT_JOB_DOCKER_IMAGE": args.image}

    def round_(stamped: bool) -> float:
        started = time.perf_counter()
        if stamped:
            refs = [tiny.remote(i) for i in range(args.tasks)]
        else:
            plain = tiny.options(runtime_env={"env_vars": env})
            refs = [plain.remote(i) for i in range(args.tasks)]
        ray.get(refs)
        return args.tasks / (time.perf_counter() - started)

    pinned, plain = [], []
    for _ in range(args.rounds):
        shell.run_line_magic("load_ext", "envpin")
        shell.run_line_magic("use_image", f"{args.image} --ray-mode env_vars")
        pinned.append(round_(True))
        shell.run_line_magic("unload_ext", "envpin")
        assert not hasattr(ray.remote_function.RemoteFunction._remote, "__envpin_original__")
        plain.append(round_(False))
    ray.shutdown()
    p, b = statistics.median(pinned), statistics.median(plain)
    print(f"ray task submission, {args.tasks} tasks x {args.rounds} rounds, image {args.image or DEFAULT_IMAGE}")
    print(f"  plain   : {b:8.0f} tasks/s (median)")
    print(f"  stamped : {p:8.0f} tasks/s (median)")
    print(f"  ratio stamped/plain: {p / b:.2f}x  (target >= 0.8x)")


if __name__ == "__main__":
    main()
