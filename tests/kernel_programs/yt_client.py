"""YTsaurus from a kernel against the fake proxy (tests/test_adapters.py): the client set up before the pin, every
kind of operation, and what the proxy received.  Run in steps, one cell each, with %use_image between them."""

# ruff: noqa: E402  (each cell imports what it uses when it runs)

# %% setup
import io
import pickle  # noqa: F401  (the tests' expressions unpickle the jobs' functions with it)
import pickletools
import sys
import warnings

TESTS = ...  # the tests folder, where testutils.fake_yt is
sys.path.insert(0, TESTS)
import yt.wrapper as yt

from testutils.fake_yt import FakeYtProxy

proxy = FakeYtProxy().__enter__()
early = yt.YtClient(proxy=proxy.url, config={"proxy": {"retries": {"count": 1}}})  # made before the pin

# %% operations
client = yt.YtClient(proxy=proxy.url)


def mapper(row):
    yield row


def reducer(key, rows):
    yield {"n": sum(1 for _ in rows)}


def train():
    print("training")


client.run_map(mapper, "//tmp/in", "//tmp/out", sync=False)
client.run_reduce(reducer, "//tmp/in", "//tmp/out", reduce_by=["k"], sync=False)
client.run_map_reduce(mapper, reducer, "//tmp/in", "//tmp/out", reduce_by=["k"], sync=False)
client.run_operation(yt.VanillaSpecBuilder().begin_task("train").command(train).job_count(2).end_task(), sync=False)
yt.config["proxy"]["url"] = proxy.url
yt.run_map(mapper, "//tmp/in", "//tmp/out", sync=False)  # the module-level API: the global config
early.run_map(mapper, "//tmp/in", "//tmp/out", sync=False)

# %% report


def user_jobs(spec):
    jobs = {k: spec[k] for k in ("mapper", "reducer", "reduce_combiner") if k in spec}
    jobs.update({"task " + k: v for k, v in (spec.get("tasks") or {}).items()})
    return jobs


report = [
    {
        "type": op["operation_type"],
        "jobs": {
            k: {"image": j.get("docker_image"), "env": j.get("environment") or {}, "command": j["command"]}
            for k, j in user_jobs(op["spec"]).items()
        },
    }
    for op in proxy.operations
]


def pickled_modules(data):
    try:
        ops = list(pickletools.genops(io.BytesIO(data)))
    except Exception:
        return set()
    strings = [a for op, a, _ in ops if isinstance(a, str)]
    return {s for s in strings if s.startswith(("cloudpickle", "dill", "yt.packages.dill"))}


payloads = [sorted(pickled_modules(d)) for d in proxy.files.values()]

# %% one-map
client = yt.YtClient(proxy=proxy.url)


def mapper(row):
    yield row


client.run_map(mapper, "//tmp/in", "//tmp/out", sync=False)

# %% own-image
client = yt.YtClient(proxy=proxy.url)


def mapper(row):
    yield row


own = (
    yt.MapSpecBuilder()
    .begin_mapper()
    .command(mapper)
    .docker_image("registry.example/Team/other:2")
    .environment({"MINE": "1"})
    .end_mapper()
    .input_table_paths(["//tmp/in"])
    .output_table_paths(["//tmp/out"])
)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    client.run_operation(own, sync=False)
print("WARNED:", [f"{w.category.__name__}: {w.message}" for w in caught])
