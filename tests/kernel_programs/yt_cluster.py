"""A pinned kernel on the fake YTsaurus cluster (tests/test_yt_e2e.py), in steps: the client, ``probe()`` (what a
job sees of where it runs), every kind of operation, operations nested two levels deep, and a job that names an
image with another Python."""

# ruff: noqa: E402  (each cell imports what it uses when it runs)

# %% client
import time

import yt.wrapper as yt

PROXY = ...  # the fake cluster's HTTP proxy
client = yt.YtClient(
    proxy=PROXY,
    config={
        "tabular_data_format": yt.JsonFormat(),
        "operation_tracker": {"poll_period": 200},
        "allow_http_requests_to_yt_from_job": True,
    },
)

# %% probe
import os
import sys

#: Only the YTsaurus image has the client installed (other images get it from the job's modules archive).
MARKER = "/opt/python/lib/python3.11/site-packages/yt/wrapper"


def probe():
    return {
        "python": sys.executable,
        "version": sys.version.split()[0],
        "docker": os.path.exists("/.dockerenv"),
        "image_id": os.environ.get("ENVPIN_IMAGE_ID"),
        "yt_image": os.environ.get("YT_JOB_DOCKER_IMAGE"),
        "marker": os.path.isdir(MARKER),
        "envpin_loaded": "envpin" in sys.modules,
    }


# %% operations
client.write_table("//tmp/in", [{"x": i, "k": i % 2} for i in range(6)])


def mapper(row):
    yield dict(row, y=row["x"] * 2, **probe())


def reducer(key, rows):
    rows = list(rows)
    yield dict(k=key["k"], n=len(rows), total=sum(r["x"] for r in rows), **probe())


def train():
    import json
    import sys

    print(json.dumps(probe()), file=sys.stderr)


timings = {}
t = time.monotonic()
client.run_map(mapper, "//tmp/in", "//tmp/mapped")
timings["map"] = time.monotonic() - t
client.run_sort("//tmp/in", "//tmp/sorted", sort_by=["k"])
t = time.monotonic()
client.run_reduce(reducer, "//tmp/sorted", "//tmp/reduced", reduce_by=["k"])
timings["reduce"] = time.monotonic() - t
t = time.monotonic()
client.run_map_reduce(mapper, reducer, "//tmp/in", "//tmp/mr", reduce_by=["k"])
timings["map_reduce"] = time.monotonic() - t
t = time.monotonic()
client.run_operation(yt.VanillaSpecBuilder().begin_task("train").command(train).job_count(2).end_task())
timings["vanilla"] = time.monotonic() - t

# %% nested
URL = ...  # the fake cluster's HTTP proxy, for the clients made inside jobs


def level(depth, path, how):
    # Runs inside a job (envpin is not there): start the next operation as a user would,
    # with a NEW client ('fresh'), or with a client made from the job's configuration ('config': what the
    # module-level API uses; the API itself fails in jobs of this client version, whose config_dump drops
    # the 'token' key that the module-level calls then read).
    import yt.wrapper as yt

    if how[0] == "fresh":
        client = yt.YtClient(
            proxy=URL,
            config={
                "tabular_data_format": yt.JsonFormat(),
                "operation_tracker": {"poll_period": 200},
                "allow_http_requests_to_yt_from_job": True,
            },
        )
    else:
        client = yt.YtClient(config=yt.config.config)
    client.write_table(path + "-in", [{"depth": depth, "how": how[0]}])
    rest = how[1:]

    def nested_mapper(row):
        out = dict(row, **probe())
        if rest:
            out["below"] = level(row["depth"] + 1, path + "-" + str(row["depth"] + 1), rest)
        yield out

    client.run_map(nested_mapper, path + "-in", path + "-out")
    return list(client.read_table(path + "-out"))


# %% top
import json


def top(row):
    yield dict(row, **probe(), below=level(2, "//tmp/nest", ["fresh", "config"]))


client.write_table("//tmp/top", [{"depth": 1, "how": "notebook"}])
client.run_map(top, "//tmp/top", "//tmp/top-out")
print(json.dumps(list(client.read_table("//tmp/top-out"))))

# %% other-python
import warnings

warnings.simplefilter("ignore")


def mapper(row):
    yield row


spec = (
    yt.MapSpecBuilder()
    .begin_mapper()
    .command(mapper)
    .docker_image("envpin-test/yt313:latest")
    .end_mapper()
    .input_table_paths(["//tmp/in"])
    .output_table_paths(["//tmp/out"])
)
client.run_operation(spec)
