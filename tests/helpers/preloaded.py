"""Run the project's console scripts in forks of one interpreter that imported the heavy libraries once.

A console script is `sys.exit(main())` in a fresh interpreter; most of a short command's time there is
importing torch, transformers, peft, trl, datasets and evaluate (5-7 s a command on 2 cores). Here a
server process imports them once; each command then runs in a fork of it: the same entry point, its own
process (no state carried from one command to the next), its own working folder, stdout and stderr
files, and exit code. The server never runs a torch operation, so a fork starts with no thread pools.

    with Preloaded(env) as run:
        rc = run(["peft-apps", "train", "sft", ...], cwd, stdout_path, stderr_path, timeout=600)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ENTRY_POINTS = {"peft-apps": ("peft_apps.core.cli", "main"), "autore": ("peft_apps.apps.autore.cli", "main")}


class Preloaded:
    def __init__(self, env: dict[str, str]):
        self.env = env

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=self.env, text=True)
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the command server did not start: {ready!r}")
        return self

    def __call__(self, argv: list[str], cwd: Path, stdout: Path, stderr: Path, timeout: int,
                 stdin: Path | None = None) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "stdout": str(stdout),
                                          "stderr": str(stderr), "timeout": timeout,
                                          "stdin": str(stdin) if stdin else os.devnull}) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["rc"])

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


_shared: Preloaded | None = None


def run_cli(argv: list[str], cwd: str | Path | None = None, input: str | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """`argv` (a console script's name, then its arguments) run by the session's shared server, started on
    first use with the environment of that moment (the test session's: its model cache, offline mode,
    COLUMNS=200); like `subprocess.run(..., capture_output=True, text=True)`."""
    global _shared
    import atexit
    import tempfile

    if _shared is None:
        _shared = Preloaded({**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}).__enter__()
        atexit.register(_shared.__exit__)
    with tempfile.TemporaryDirectory() as d:
        out, err, inp = Path(d, "stdout"), Path(d, "stderr"), Path(d, "stdin")
        if input is not None:
            inp.write_text(input, encoding="utf-8")
        rc = _shared(list(argv), Path(cwd or os.getcwd()), out, err, timeout, inp if input is not None else None)
        return subprocess.CompletedProcess(argv, rc, out.read_text(encoding="utf-8", errors="replace"),
                                           err.read_text(encoding="utf-8", errors="replace"))


def _child(req: dict) -> int:
    import importlib
    import signal

    os.chdir(req["cwd"])
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    f = os.open(req["stdin"], os.O_RDONLY)
    os.dup2(f, 0)
    os.close(f)
    sys.stdin = open(0, closefd=False)
    signal.alarm(req["timeout"])  # past it, the command dies of SIGALRM (exit code -14)
    module, fn = ENTRY_POINTS[req["argv"][0]]
    sys.argv = list(req["argv"])
    try:
        rc = getattr(importlib.import_module(module), fn)()
        return rc if isinstance(rc, int) else 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _serve() -> None:
    import importlib

    import datasets  # noqa: F401
    import evaluate  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    for module, _ in ENTRY_POINTS.values():
        importlib.import_module(module)
    channel = sys.stdout
    print("ready", file=channel, flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os._exit(_child(req))
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), file=channel, flush=True)


if __name__ == "__main__":
    _serve()
