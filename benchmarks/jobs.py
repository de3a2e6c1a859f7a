"""Job overheads: envpin's ContainerExecutor vs concurrent.futures.ProcessPoolExecutor, same run.

Both with the same number of workers, on this machine; envpin in container
mode (the caller on the host, workers in containers of the image), which is
the expensive one.  Printed as ratios against the baseline measured just
before or after, interleaved; nothing is asserted (the machines are noisy).

    python benchmarks/jobs.py [--workers 2] [--image envpin-test/py311:latest]

* warm per-job latency of a tiny function, one job at a time (target <= 1.0x; median of 5 interleaved
  rounds of 100 jobs);
* throughput of 2,000 tiny jobs submitted at once (target >= 1.0x; median of 3 interleaved rounds);
* round trip of a 100 MB NumPy array (target >= 0.8x of the baseline's speed);
* the cold first job of a new executor vs ``docker run IMAGE python -c pass`` (target <= 1.2x).
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, wait

from _setup import parse_and_prepare


def tiny(x):
    return x + 1


def echo(a):
    return a


def per_job_latency(ex, n: int) -> float:
    for i in range(20):
        ex.submit(tiny, i).result()
    t = time.perf_counter()
    for i in range(n):
        ex.submit(tiny, i).result()
    return (time.perf_counter() - t) / n


def throughput(ex, n: int) -> float:
    t = time.perf_counter()
    futures = [ex.submit(tiny, i) for i in range(n)]
    wait(futures)
    assert all(f.result() == i + 1 for i, f in enumerate(futures))
    return n / (time.perf_counter() - t)


def roundtrip(ex, array, repeats: int) -> float:
    ex.submit(echo, array[:10]).result()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = ex.submit(echo, array).result()
        times.append(time.perf_counter() - t)
        assert out.shape == array.shape
    return statistics.median(times)


def main() -> None:
    import docker
    import numpy as np

    from envpin.jobs.executor import ContainerExecutor

    args = parse_and_prepare({"workers": 2})
    client = docker.from_env()

    # Cold: a new executor's first job vs a bare `docker run IMAGE python -c pass`, interleaved.
    cold, bare = [], []
    for _ in range(5):
        t = time.perf_counter()
        client.containers.run(args.image, ["python3", "-c", "pass"], remove=True)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        ex = ContainerExecutor(args.image, max_workers=1)
        ex.submit(tiny, 1).result()
        cold.append(time.perf_counter() - t)
        ex.shutdown()

    array = np.random.default_rng(0).random(12_500_000)  # 100 MB
    with ProcessPoolExecutor(args.workers) as ppe, ContainerExecutor(args.image, max_workers=args.workers) as env:
        # Interleaved rounds, medians: a burst of load on this shared machine hits both alike.
        lats: dict[str, list[float]] = {"p": [], "e": []}
        thrs: dict[str, list[float]] = {"p": [], "e": []}
        for _ in range(5):
            lats["p"].append(per_job_latency(ppe, 100))
            lats["e"].append(per_job_latency(env, 100))
        for _ in range(3):
            thrs["p"].append(throughput(ppe, 2000))
            thrs["e"].append(throughput(env, 2000))
        lat_p, lat_e = statistics.median(lats["p"]), statistics.median(lats["e"])
        thr_p, thr_e = statistics.median(thrs["p"]), statistics.median(thrs["e"])
        rt_p, rt_e = roundtrip(ppe, array, 5), roundtrip(env, array, 5)

    print(f"image {args.image}, {args.workers} workers, caller Python {sys.version.split()[0]} on the host")
    print(
        f"warm per-job latency : envpin {lat_e * 1e3:6.2f} ms  ProcessPool {lat_p * 1e3:6.2f} ms  ratio {lat_e / lat_p:5.2f}x (target <= 1.0x)"
    )
    print(
        f"2,000 tiny jobs      : envpin {thr_e:6.0f}/s    ProcessPool {thr_p:6.0f}/s    ratio {thr_e / thr_p:5.2f}x (target >= 1.0x)"
    )
    print(
        f"100 MB array trip    : envpin {rt_e * 1e3:6.0f} ms  ProcessPool {rt_p * 1e3:6.0f} ms  speed ratio {rt_p / rt_e:5.2f}x (target >= 0.8x)"
    )
    c, b = statistics.median(cold), statistics.median(bare)
    print(
        f"cold first job       : envpin {c * 1e3:6.0f} ms  docker run {b * 1e3:6.0f} ms  ratio {c / b:5.2f}x (target <= 1.2x)"
    )


if __name__ == "__main__":
    main()
