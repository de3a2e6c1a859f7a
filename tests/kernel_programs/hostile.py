"""The hostile kernel's toolbox (tests/security), run in a kernel as another uid, in cells:

* ``toolbox``: talking to the server through the control folder as the kernel side of %use_image does
  (``send``, ``wait_answer``), and planting what attacks need (``plant_link``, ``tidy``, ``all_answers``);
* ``ask``: a %use_image request in one call (test_image_rules.py);
* ``flip-alias``: an alias flipped between an allowed and a refused image while asking (test_image_rules.py);
* ``pool``: attacks on a pooled kernel's folders and on other kernels through /proc (test_pool_hostile.py).
"""

# ruff: noqa: E402  (each cell imports what it uses when it runs)

# %% toolbox
import json
import os
import time
import uuid

CONTROL = os.environ["ENVPIN_CONTROL_DIR"]
SOCK = os.path.join(os.path.dirname(CONTROL), "sock")


def _put(name, data):
    tmp = os.path.join(CONTROL, "." + uuid.uuid4().hex)
    with open(tmp, "wb") as fh:
        fh.write(data if isinstance(data, bytes) else json.dumps(data).encode())
    os.replace(tmp, os.path.join(CONTROL, name))


def send(request):
    _put("request.json", request)


def wait_answer(rid, timeout=10.0):
    """The final answer to request rid (None when none came): what the kernel side of %use_image does."""
    path = os.path.join(CONTROL, f"response-{rid}.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(open(path).read())
        except (OSError, ValueError):
            time.sleep(0.05)
            continue
        if data.get("status") != "working":
            os.unlink(path)
            return data
        time.sleep(0.05)
    return None


def tidy():
    """Clear what the attacks left in the control folder (temporary files, folders, links): a kernel that
    wants to talk to the server again cleans up first, as the quota (tmpfs) may be full of its own junk."""
    import shutil

    for n in os.listdir(CONTROL):
        p = os.path.join(CONTROL, n)
        if n.startswith("response-") and os.path.isfile(p) and not os.path.islink(p):
            continue
        try:
            shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        except OSError:
            pass


def all_answers():
    out = []
    for n in os.listdir(CONTROL):
        p = os.path.join(CONTROL, n)
        if n.startswith("response-") and os.path.isfile(p) and not os.path.islink(p):
            try:
                out.append(open(p).read())
            except OSError:
                pass
    return out


def plant_link(folder, name, target):
    p = os.path.join(folder, name)
    try:
        if os.path.isdir(p) and not os.path.islink(p):
            os.rmdir(p)
        else:
            os.unlink(p)
    except OSError:
        pass
    try:
        os.symlink(target, p)
    except OSError:
        pass


# %% ask
import threading


def ask(image, pull=False, restart=False, timeout=60.0):
    rid = uuid.uuid4().hex
    send({"id": rid, "image": image, "pull": pull, "allow_restart": restart})
    return wait_answer(rid, timeout)


# %% flip-alias
ALIASES = ...  # the aliases file the kernel may write (the server reads it)
ALLOWED = ...  # an image allowed_images allows
REFUSED = ...  # an image allowed_images refuses
os.unlink(ALIASES)
stop = False


def flip():
    i = 0
    while not stop:
        target = ALLOWED if i % 2 else REFUSED
        tmp = ALIASES + ".tmp"
        open(tmp, "w").write(json.dumps({"py": target}))
        os.replace(tmp, ALIASES)
        i += 1


flipper = threading.Thread(target=flip)
flipper.start()
answers = [ask("py", timeout=30) for _ in range(20)]
stop = True
flipper.join()
print(json.dumps(answers))

# %% pool
import builtins  # noqa: F401  (for the tests' own code, run in the kernel after this cell)
import sys  # noqa: F401  (the same)

NB = os.getcwd()


def peek(path, limit=4096):
    """What reading path gives: its text, or the error's name (printed: a leak shows in the output)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return type(exc).__name__


def plant(folder, name, body):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(body)


def relink(folder, target):
    """Move a folder aside and put a link to target at its name."""
    aside = folder.rstrip("/") + "-" + uuid.uuid4().hex[:6]
    os.rename(folder, aside)
    os.symlink(target, folder)
    return aside


def fill(folder, count):
    """count empty files in folder (fewer when a quota stops it): how many were made."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    tag, made = uuid.uuid4().hex[:6], 0
    try:
        for i in range(count):
            try:
                os.close(os.open(f"j{tag}{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=fd))
            except OSError:
                break
            made += 1
    finally:
        os.close(fd)
    return made


def tree(folder, depth):
    """A chain of depth nested folders in folder (shorter when a quota stops it), a file at the bottom."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    name, made = "t" + uuid.uuid4().hex[:6], 0
    try:
        for _ in range(depth):
            try:
                os.mkdir(name, dir_fd=fd)
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            except OSError:
                break
            os.close(fd)
            fd, name, made = sub, "d", made + 1
        try:
            os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
        except OSError:
            pass
    finally:
        os.close(fd)
    return made


def trim(folder, keep=1000):
    """Give back some of this kernel's own quota (its restarts and moves need entries there): keep keep junk
    files and one tree, remove the rest."""
    import subprocess

    names = sorted(os.listdir(folder))
    for n in [n for n in names if n.startswith("j")][keep:]:
        os.unlink(os.path.join(folder, n))
    extra = [os.path.join(folder, n) for n in names if n.startswith("t")][1:]
    if extra:
        subprocess.run(["rm", "-rf", "--", *extra], check=False)


def steal(paths):
    """Other kernels' files through /proc/PID/root, from /proc and from a working folder that became /proc."""
    found = {}
    for base in {"/proc", os.getcwd()}:
        try:
            pids = [p for p in os.listdir(base) if p.isdigit()]
        except OSError:
            continue
        for pid in pids:
            for path in paths:
                text = peek(os.path.join(base, pid, "root", path.lstrip("/")))
                if text not in ("FileNotFoundError", "PermissionError", "NotADirectoryError", "OSError"):
                    found[f"{base}/{pid}/root{path}"] = text
    return found
