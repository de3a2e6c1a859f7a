"""One side of the pickle-compatibility matrix, run inside a container (see tools/pickle_matrix.py).

Standard library only (plus the pickler under test and, when the image has
it, NumPy), and valid Python 3.9: it runs in every image of the matrix.

``python probe.py dump PICKLER WHEEL`` pickles the corpus below with the
pickler found in ``WHEEL`` (a pure-Python wheel, imported straight from the
zip, so that one image serves every pickler version) and prints one JSON
object: this environment, and per case the payload (base64), its out-of-band
buffers and the ``repr`` of the result the case must give.

``python probe.py load PICKLER WHEEL SENDERS.json`` loads and runs every
sender's cases here and prints one JSON line per (sender, case).  Each
sender's cases run in a child process, so that a payload that crashes the
interpreter (code objects of another Python can segfault) is recorded as a
crash of that case, and the rest of the cases run in a fresh child.

The corpus is what envpin's users send: functions and closures defined in
a notebook (``__main__``), lambdas, classes and dataclasses defined there,
generator functions, a class from a module shipped by value (what envpin
does with a notebook's own modules), an enum, a recursive function, a custom
exception, and a NumPy array passed out of band (pickle protocol 5).
"""

import base64
import dataclasses
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile

PROTOCOL = 5


def _use_pickler(pickler, wheel):
    sys.path.insert(0, wheel)
    module = __import__(pickler)
    if not os.path.abspath(module.__file__).startswith(os.path.abspath(wheel) + os.sep):
        raise SystemExit(f"{pickler} was imported from {module.__file__}, not from {wheel}")
    return module


# -- the corpus ------------------------------------------------------------------------------------
#: A notebook's code, run into ``__main__`` on the sender's side only: the receiver, like a real job
#: worker, has none of it, so a pickle that refers to ``__main__.X`` instead of carrying X fails there.
NOTEBOOK = """
import dataclasses
import enum
import math

FACTOR = 2.5
SEEN = [1, 2, 3]


def scale(x):
    return math.floor(x * FACTOR) + len(SEEN)


def make_counter(start):
    count = [start]

    def step(by=1):
        count[0] += by
        return count[0]

    return step


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0

    def norm2(self):
        return self.x * self.x + self.y * self.y


def make_point_factory(offset):
    def make(x):
        return Point(x + offset, x - offset)

    return make


class Account:
    rate = 0.5

    def __init__(self, owner, balance=0):
        self.owner, self.balance = owner, balance

    def deposit(self, amount):
        self.balance += amount
        return self

    @property
    def interest(self):
        return self.balance * self.rate

    @classmethod
    def empty(cls, owner):
        return cls(owner)

    def __repr__(self):
        return "Account(%r, %r, %r)" % (self.owner, self.balance, self.interest)


def squares(n):
    for i in range(n):
        yield i * i


class Colour(enum.Enum):
    RED = 1
    GREEN = 2


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class JobFailed(Exception):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.code = code
"""


SHIPPED_MODULE = """
import statistics


class Summary:
    def __init__(self, values):
        self.values = list(values)

    def mean(self):
        return statistics.mean(self.values)


def summarise(values):
    return Summary(values).mean()
"""


def _shipped_module():
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "notebook_helpers.py"), "w") as f:
        f.write(SHIPPED_MODULE)
    sys.path.insert(0, folder)
    import notebook_helpers

    return notebook_helpers


def corpus(pickler_name, pickler):
    """name -> (object to pickle, name of the use below); objects are built only on the sender's side."""
    main = sys.modules["__main__"].__dict__
    exec(compile(NOTEBOOK, "<notebook>", "exec"), main)
    scale, make_counter, make_point_factory = main["scale"], main["make_counter"], main["make_point_factory"]
    Account, squares, Colour, fib, JobFailed = (main[n] for n in ("Account", "squares", "Colour", "fib", "JobFailed"))
    cases = {
        "function": (scale, "call_3_7"),
        "closure": (make_counter(10), "call_thrice"),
        "lambda": (eval("lambda x: x * 2", main), "call_21"),
        "dataclass_closure": (make_point_factory(3), "call_4_repr"),
        "class_instance": (Account.empty("ada").deposit(10), "account"),
        "generator_function": (squares, "generator"),
        "enum_member": (Colour.GREEN, "enum"),
        "recursive_function": (fib, "fib"),
        "exception": (JobFailed("disk full", 28), "exception"),
    }
    if pickler_name == "cloudpickle" and hasattr(pickler, "register_pickle_by_value"):
        helpers = _shipped_module()
        pickler.register_pickle_by_value(helpers)
        cases["shipped_module"] = ((helpers.Summary([1, 2, 6]), helpers.summarise), "shipped")
    try:
        import numpy
    except ImportError:
        numpy = None
    if numpy is not None:
        cases["numpy_out_of_band"] = ((eval("lambda a: float((a * 2).sum())", main), numpy.arange(1e5)), "apply")
    return cases


def use(how, obj):
    """The result of a case, as a string both sides compute the same way."""
    if how == "call_3_7":
        return repr(obj(3.7))
    if how == "call_thrice":
        return repr([obj(), obj(2), obj()])
    if how == "call_21":
        return repr(obj(21))
    if how == "call_4_repr":
        point = obj(4)
        return repr((point, point.norm2(), type(point).__name__, dataclasses.is_dataclass(point)))
    if how == "account":
        return repr((obj, obj.deposit(5).interest, type(obj).empty("x").balance))
    if how == "generator":
        return repr(list(obj(6)))
    if how == "enum":
        return repr((obj.name, obj.value, obj is type(obj)[obj.name], len(type(obj))))
    if how == "fib":
        return repr(obj(15))
    if how == "exception":
        return repr((type(obj).__name__, obj.args, obj.code, isinstance(obj, Exception)))
    if how == "shipped":
        summary, summarise = obj
        return repr((summary.mean(), summarise([2, 4])))
    if how == "apply":
        fn, array = obj
        return repr(fn(array))
    raise ValueError(how)


def _environment(pickler_name, pickler):
    import platform

    return {
        "python": platform.python_version(),
        "python_minor": "{}.{}".format(*sys.version_info[:2]),
        "implementation": platform.python_implementation(),
        "pickler": pickler_name,
        "pickler_version": getattr(pickler, "__version__", "?"),
    }


def _error(exc):
    # "<module 'x' from '/matrix/wheels/...whl/x.py'>": where the matrix kept its files says nothing
    text = re.sub(r" from '[^']*'>", ">", f"{type(exc).__name__}: {exc}")
    return text if len(text) <= 300 else text[:297] + "..."


def dump(pickler_name, wheel):
    pickler = _use_pickler(pickler_name, wheel)
    out = {"env": _environment(pickler_name, pickler), "cases": {}}
    for name, (obj, how) in corpus(pickler_name, pickler).items():
        buffers = []
        try:  # pickled first: using a case changes it (a counter counts)
            if pickler_name == "cloudpickle":
                payload = pickler.dumps(obj, protocol=PROTOCOL, buffer_callback=buffers.append)
            else:  # dill as YTsaurus uses it from a notebook (yt/wrapper/py_wrapper.py): no buffer callback
                payload = pickler.dumps(obj, protocol=PROTOCOL, recurse=True, byref=False)
            expected = use(how, obj)
        except Exception as exc:  # the sender cannot make this pickle: recorded, not fatal
            out["cases"][name] = {"how": how, "dump_error": _error(exc)}
            continue
        out["cases"][name] = {
            "how": how,
            "expected": expected,
            "payload": base64.b64encode(payload).decode(),
            "buffers": [base64.b64encode(bytes(b.raw())).decode() for b in buffers],
        }
    print(json.dumps(out))


def _load_child(pickler_name, wheel, senders_file, sender, first):
    """In a child process: load and run sender's cases from index ``first`` on, one JSON line each."""
    pickler = _use_pickler(pickler_name, wheel)
    with open(senders_file) as f:
        cases = json.load(f)[sender]["cases"]
    for name in sorted(cases)[first:]:
        case = cases[name]
        line = {"case": name}
        if "payload" not in case:
            line.update(outcome="not_made", detail=case.get("dump_error", ""))
        else:
            stage = "load"
            try:
                payload = base64.b64decode(case["payload"])
                buffers = [base64.b64decode(b) for b in case["buffers"]]
                if pickler_name == "cloudpickle":
                    obj = pickle.loads(payload, buffers=buffers)
                else:
                    obj = pickler.loads(payload)
                stage = "run"
                got = use(case["how"], obj)
            except BaseException as exc:
                line.update(outcome="error", stage=stage, detail=_error(exc))
            else:
                if got == case["expected"]:
                    line.update(outcome="ok")
                else:
                    line.update(outcome="wrong", detail="expected {}, got {}".format(case["expected"], got))
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


def load(pickler_name, wheel, senders_file):
    with open(senders_file) as f:
        senders = json.load(f)
    for sender in range(len(senders)):
        names = sorted(senders[sender]["cases"])
        done = 0
        while done < len(names):
            child = subprocess.run(
                [sys.executable, __file__, "load-child", pickler_name, wheel, senders_file, str(sender), str(done)],
                capture_output=True,
                timeout=120,
            )
            lines = [json.loads(x) for x in child.stdout.decode().splitlines() if x.startswith("{")]
            for line in lines:
                line["sender"] = sender
                print(json.dumps(line))
            done += len(lines)
            if child.returncode != 0 and done < len(names):
                # The process died on case ``done``: a crash, with the signal that killed it.
                code = child.returncode
                why = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                tail = child.stderr.decode(errors="replace").strip().splitlines()[-1:]
                why += f" ({tail[0].strip()[:200]})" if tail else ""
                print(
                    json.dumps(
                        {
                            "sender": sender,
                            "case": names[done],
                            "outcome": "crash",
                            "detail": why,
                        }
                    )
                )
                done += 1
            elif child.returncode != 0:
                break


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "dump":
        dump(sys.argv[2], sys.argv[3])
    elif command == "load":
        load(sys.argv[2], sys.argv[3], sys.argv[4])
    elif command == "load-child":
        _load_child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        raise SystemExit("usage: probe.py dump|load PICKLER WHEEL [SENDERS.json]")
