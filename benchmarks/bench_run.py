"""Measured child processes: wall time, peak RSS (from wait4) and what the child reported."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "bench_child.py")
# GNU time reports the peak RSS of the command alone.  wait4 on our own child
# would also count this (large) process: a forked child's old memory map is
# counted in its ru_maxrss when it execs.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else shutil.which("time")


class ChildFailed(RuntimeError):
    """A measured command exited with an error; carries its stderr."""


@dataclasses.dataclass
class Run:
    """One measured run: ``seconds`` is the operation's own time.

    For a reference tool it is the process's wall time.  For our engine it is
    what the child timed around the API call, without the interpreter start
    and imports (``startup``), as inside freezer-agent where they are paid once.
    """

    seconds: float
    rss_mb: float
    startup: float = 0.0
    report: dict[str, Any] = dataclasses.field(default_factory=dict)


def child_environment() -> dict[str, str]:
    """The environment of a measured command: ours, as installed by pip, runs from compiled
    bytecode, so the package is compiled once here and a PYTHONDONTWRITEBYTECODE of this shell
    (which would make every run compile it again) is left out."""
    global _COMPILED
    if not _COMPILED:
        import compileall

        import freezer_rsyncv2
        compileall.compile_dir(os.path.dirname(freezer_rsyncv2.__file__), quiet=1)
        _COMPILED = True
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


_COMPILED = False


def run_command(argv: list[str], cwd: str | None = None) -> Run:
    """Run argv to completion; wall time and the peak RSS of it and its children."""
    env = child_environment()
    if hasattr(os, "sync"):
        os.sync()   # no dirty pages of an earlier step are flushed during this one
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as rss:
        if GNU_TIME:
            argv = [GNU_TIME, "-q", "-f", "%M", "-o", rss.name] + argv
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        words = rss.read().split() if GNU_TIME else []
        peak_kib = int(words[-1]) if words and words[-1].isdigit() else usage.ru_maxrss
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace")[-2000:]
        raise ChildFailed("%s exited %d: %s" % (" ".join(argv[:3]), proc.returncode, tail))
    run = Run(seconds, peak_kib / 1024.0)
    if stdout.strip().startswith(b"{"):
        run.report = json.loads(stdout)
    return run


@contextlib.contextmanager
def work_directory(parent: str | None, prefix: str, keep: bool = False) -> Iterator[str]:
    """A new directory under ``parent`` (made if needed; default: the temporary one),
    removed at the end unless ``keep`` (then its path is printed to stderr)."""
    if parent:
        os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        yield work
    finally:
        if keep:
            print("the data is kept in %s" % work, file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_ours(spec: dict[str, Any]) -> Run:
    """Run one engine operation in a fresh interpreter (bench_child.py)."""
    run = run_command([sys.executable, CHILD, json.dumps(spec)])
    op_seconds = float(run.report["seconds"])
    run.startup = run.seconds - op_seconds
    run.seconds = op_seconds
    return run


@dataclasses.dataclass
class Series:
    """The repeats of one operation; figures are medians."""

    runs: list[Run] = dataclasses.field(default_factory=list)

    def add(self, run: Run) -> Run:
        self.runs.append(run)
        return run

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def rss_mb(self) -> float:
        return max(r.rss_mb for r in self.runs)

    @property
    def startup(self) -> float:
        return statistics.median(r.startup for r in self.runs)

    def report(self, key: str, default: Any = None) -> Any:
        values = [r.report.get(key) for r in self.runs if key in r.report]
        return values[-1] if values else default
