"""envpin.DaskCluster (scheduler and workers as containers of the image) vs LocalCluster on the host, same run.

Both clusters have the same shape (``--workers`` workers of one thread, with
nannies, everything on 127.0.0.1); each is started ``--runs`` times,
alternating.  The client is this process, pinned to the image as a host
kernel is after ``%use_image`` (so envpin's check at connect and before each
submission is part of what is measured, for both).  Printed as ratios against
LocalCluster; nothing is asserted (the machines are noisy).

    python benchmarks/dask.py [--workers 2] [--runs 3] [--tasks 2000] [--image envpin-test/dask:latest]

* time to the first result: from asking for the cluster to the result of a
  first tiny task (cluster start, ``Client(...)`` with its check, one task);
* throughput of ``--tasks`` tiny tasks once started, two ways: submitted at
  once (``client.map``) and one ``client.submit`` each (target for both:
  >= 0.9x LocalCluster's).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# This file is called dask.py: its folder, first on sys.path when run as a script, would shadow the dask package
# (here and in the LocalCluster's worker processes, which inherit sys.path): it goes to the end of the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE] + [HERE]


def tiny(x):
    return x + 1


def first_result(make) -> tuple[float, object, object]:
    from distributed import Client

    t = time.perf_counter()
    cluster = make()
    client = Client(cluster)
    assert client.submit(tiny, 1, pure=False).result() == 2
    return time.perf_counter() - t, cluster, client


def mapped(client, n: int) -> float:
    t = time.perf_counter()
    futures = client.map(tiny, range(n), pure=False)
    results = client.gather(futures)
    assert results[-1] == n
    return n / (time.perf_counter() - t)


def submitted(client, n: int) -> float:
    t = time.perf_counter()
    futures = [client.submit(tiny, i, pure=False) for i in range(n)]
    results = client.gather(futures)
    assert results[-1] == n
    return n / (time.perf_counter() - t)


def main() -> None:
    from _setup import parse_and_prepare

    args = parse_and_prepare({"workers": 2, "runs": 3, "tasks": 2000})
    image = args.image if args.image != "envpin-test/py311:latest" else "envpin-test/dask:latest"
    if image != args.image:
        from tools.images import build

        build(image)
    import platform
    from importlib.metadata import version

    from distributed import LocalCluster

    from envpin import adapters
    from envpin.adapters.dask_cluster import ContainerCluster
    from envpin.compat import fingerprints
    from envpin.session import stamping, state

    facts = fingerprints.fingerprint(image=image)
    for adapter in adapters.builtin():
        stamping.register(adapter)
    stamping.pin_session(
        state.Pin(image, image, facts["image_id"], facts["python_version"], facts["cloudpickle"], mode="host")
    )
    print(
        f"client: Python {platform.python_version()}, distributed {version('distributed')}; image {image}: "
        f"Python {facts['python_version']}, distributed {facts.get('distributed')}",
        file=sys.stderr,
    )

    makers = {
        "LocalCluster (host)": lambda: LocalCluster(
            n_workers=args.workers, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ),
        "DaskCluster (containers)": lambda: ContainerCluster(args.workers, image=image),
    }
    results: dict[str, dict[str, list[float]]] = {k: {"first": [], "map": [], "submit": []} for k in makers}
    import warnings

    warnings.simplefilter("ignore")  # LocalClusterOnHost: the host cluster is the baseline here, on purpose
    for run in range(args.runs):
        order = list(makers) if run % 2 == 0 else list(reversed(makers))
        for name in order:
            first, cluster, client = first_result(makers[name])
            mapped(client, 200)  # warm both paths
            submitted(client, 200)
            results[name]["first"].append(first)
            results[name]["map"].append(mapped(client, args.tasks))
            results[name]["submit"].append(submitted(client, args.tasks))
            client.close()
            cluster.close()
            print(
                f"run {run + 1} {name}: first result {first:.2f}s, map {results[name]['map'][-1]:.0f}/s, "
                f"submit {results[name]['submit'][-1]:.0f}/s",
                file=sys.stderr,
            )
    stamping.unpin_session()

    base, ours = results["LocalCluster (host)"], results["DaskCluster (containers)"]
    med = statistics.median
    print(f"\n{args.workers} workers x 1 thread, {args.tasks} tiny tasks, medians of {args.runs} runs")
    print(f"{'':28}{'LocalCluster':>14}{'DaskCluster':>14}{'ratio':>8}")
    rows = [
        ("time to first result (s)", med(base["first"]), med(ours["first"]), "lower is better"),
        ("throughput, map (tasks/s)", med(base["map"]), med(ours["map"]), "target >= 0.9x"),
        ("throughput, submit (tasks/s)", med(base["submit"]), med(ours["submit"]), "target >= 0.9x"),
    ]
    for label, b, o, note in rows:
        print(f"{label:28}{b:>14.2f}{o:>14.2f}{o / b:>7.2f}x  {note}")


if __name__ == "__main__":
    main()
