"""Benchmark: freezer-agent with our engine against freezer-agent with Freezer's tar engine.

Run from a checkout: ``python benchmarks/bench_agent.py``.  It builds (once,
under ``--venv``) a virtualenv holding ``freezer==19.0.0`` and a regular
install of a wheel built from this checkout (so the ``.pth`` hook is
there), generates a tree (``--source-mb`` MiB of small source-like text
files and ``--big-files`` random files of ``--big-mb`` MiB each; by default
about 250 MB, like a Django checkout beside six 30 MB blobs), serves the
Keystone stand-in of the integration tests on 127.0.0.1, and runs
``freezer-agent --action backup --mode fs --storage local --compression
gzip --incremental`` with ``--engine rsyncv2`` (ours) and ``--engine tar``
on the same tree: a level 0, then one big file is appended to and a level
1 runs.  ``--storage s3`` stores the backups on the S3-API server of the
integration tests (moto, on 127.0.0.1; the ``test`` extras) instead;
Freezer 19.0.0's tar engine cannot finish a backup there (its S3
storage's ``put_file`` raises, so no level is published), so its runs
show as failed.  Every run is a child process measured by GNU time: wall time and
peak RSS (the agent's own, as its biggest process).  Each run is repeated
(``--repeats``); the table shows every run and the ratios ours/tar.

No network: everything but the venv's first installation stays on this
machine (the installation needs PyPI or a mirror pip is configured for).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, HERE]

import bench_data as data  # noqa: E402
from bench_run import GNU_TIME, ChildFailed, Run, run_command  # noqa: E402

MIB = 1 << 20
FREEZER_REQUIREMENT = "freezer==19.0.0"
HOST = "benchhost"
ENGINES = ("rsyncv2", "tar")
RSS_LIMIT_MB = 150.0
IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "venv", ".tox", "build", "dist", "*.egg-info",
    "__pycache__", ".hypothesis", ".mypy_cache", ".pytest_cache",
    "bench-data", ".eggs")

# Words source files are made of: identifiers, keywords, punctuation.
_WORDS = ("def class return self import from if else elif for in while try "
          "except finally with as not and or None True False lambda yield "
          "raise pass break continue assert global request response model "
          "field value queryset object manager instance form widget template "
          "context render settings path url view kwargs args name data "
          "result items get set update delete filter exclude annotate "
          "values order_by select_related prefetch_related connection "
          "cursor execute params sql compiler alias join where having "
          "( ) [ ] { } : , . = == != + - * / % -> # \"\"\" ' _ __init__ "
          "0 1 2 10 100 'utf-8' 'default' 'pk' 'id' str int list dict "
          "tuple bool isinstance len super getattr setattr hasattr").split()


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the tree -----------------------------------------------------------------

def source_text(rng: random.Random, size: int) -> bytes:
    """About ``size`` bytes of Python-looking lines (compresses like source code)."""
    lines, total = [], 0
    while total < size:
        indent = "    " * rng.choice((0, 1, 1, 2, 2, 2, 3, 4))
        line = indent + " ".join(rng.choices(_WORDS, k=rng.randint(2, 12)))
        lines.append(line)
        total += len(line) + 1
    return ("\n".join(lines) + "\n").encode()[:max(size, 1)]


def make_tree(root: str, source_mb: int, big_files: int, big_mb: int,
              seed: int = 11) -> tuple[int, int]:
    """Write the tree; returns (files, bytes)."""
    rng = random.Random(seed)
    files = total = 0
    budget = source_mb * MIB
    d = 0
    while total < budget:
        package = os.path.join(root, "project", "pkg%03d" % (d // 20),
                               "mod%03d" % d)
        os.makedirs(package, exist_ok=True)
        for i in range(rng.randint(5, 40)):
            # Mostly small files, a few large ones (like a source tree).
            size = int(min(rng.lognormvariate(8.7, 1.2), 400_000))
            ext = rng.choice((".py", ".py", ".py", ".txt", ".html", ".po",
                              ".js", ".css"))
            with open(os.path.join(package, "f%03d%s" % (i, ext)), "wb") as out:
                out.write(source_text(rng, size))
            files += 1
            total += size
        d += 1
    blobs = os.path.join(root, "blobs")
    os.makedirs(blobs, exist_ok=True)
    for i in range(big_files):
        data.write_file(os.path.join(blobs, "blob%d.bin" % i), big_mb * MIB,
                        seed + 100 + i)
        files += 1
        total += big_mb * MIB
    return files, total


def tree_size(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f))
               for d, _dirs, names in os.walk(root) for f in names)


# -- the venv -------------------------------------------------------------------

def prepare_venv(venv: str, work: str) -> str:
    """A venv with freezer and this checkout's wheel; returns freezer-agent's path."""
    python = os.path.join(venv, "bin", "python")
    agent = os.path.join(venv, "bin", "freezer-agent")
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env = {k: v for k, v in env.items()
           if not k.startswith(("PYTHON", "FREEZER_RSYNCV2_"))
           and k != "VIRTUAL_ENV"}
    if not os.path.exists(python):
        log("creating %s" % venv)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, env=env)
    if not os.path.exists(agent):
        log("installing %s into %s" % (FREEZER_REQUIREMENT, venv))
        subprocess.run([python, "-m", "pip", "install", "-q",
                        FREEZER_REQUIREMENT], check=True, env=env)
    # Always this checkout, as a regular install (the .pth hook with it).
    src = os.path.join(work, "wheel-src")
    wheels = os.path.join(work, "wheels")
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.copytree(REPO, src, ignore=IGNORE)
    subprocess.run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    wheels, src], check=True, env=env, stdout=subprocess.DEVNULL)
    wheel = [os.path.join(wheels, n) for n in os.listdir(wheels)
             if n.startswith("freezer_rsyncv2-")][0]
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps",
                    "--force-reinstall", wheel], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    # and what it needs that freezer did not bring (zstandard, blake3, ...)
    subprocess.run([python, "-m", "pip", "install", "-q", wheel], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(src, ignore_errors=True)
    return agent


# -- the runs -------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, work: str, agent: str,
                 s3: Any = None) -> None:
        self.args = args
        self.work = work
        self.agent = agent
        self.s3 = s3            # tests.s3server.S3Server with --storage s3
        self.bucket = "bench-agent-%d" % os.getpid()
        self.src = os.path.join(work, "src")
        self.rows: list[tuple[str, int, str, Run | None]] = []   # engine, level, run#

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def container(self, engine: str, repeat: int) -> str:
        """A new container for the repeat's level 0, on the storage benchmarked."""
        if self.s3 is None:
            path = self.path("container-%s" % engine)
            shutil.rmtree(path, ignore_errors=True)
            return path
        return "%s/container-%s-%d" % (self.bucket, engine, repeat)

    def storage_args(self, container: str) -> list[str]:
        if self.s3 is None:
            return ["--storage", "local", "--container", container]
        return ["--storage", "s3", "--endpoint", self.s3.endpoint,
                "--access-key", self.s3.access_key,
                "--secret-key", self.s3.secret_key, "--container", container]

    def agent_run(self, *args: str) -> Run | None:
        """The measured run, or None if the agent failed (its error is logged)."""
        argv = [self.agent, *args, "--hostname", HOST,
                "--log-file", self.path("agent.log")]
        try:
            return run_command(argv, cwd=self.work)
        except ChildFailed as exc:
            log("failed: %s" % str(exc).strip().splitlines()[-1])
            return None

    def backup(self, engine: str, container: str, name: str) -> Run | None:
        return self.agent_run(
            "--action", "backup", "--mode", "fs", *self.storage_args(container),
            "--engine", engine, "--compression", self.args.compression,
            "--incremental", "--path-to-backup", self.src, "--backup-name", name)

    def restore(self, engine: str, container: str, name: str,
                dest: str) -> Run | None:
        shutil.rmtree(dest, ignore_errors=True)
        return self.agent_run(
            "--action", "restore", *self.storage_args(container),
            "--engine", engine, "--backup-name", name,
            "--restore-abs-path", dest)

    def run(self) -> None:
        appended = os.path.join(self.src, "blobs", "blob0.bin")
        size = os.path.getsize(appended)
        for repeat in range(1, self.args.repeats + 1):
            with open(appended, "r+b") as f:
                f.truncate(size)        # every repeat starts from the same tree
            containers = {engine: self.container(engine, repeat)
                          for engine in ENGINES}
            for engine in ENGINES:
                self.record(engine, 0, repeat,
                            self.backup(engine, containers[engine], "b"))
            with open(appended, "ab") as f:
                f.write(random.Random(repeat).randbytes(MIB))
            for engine in ENGINES:
                self.record(engine, 1, repeat,
                            self.backup(engine, containers[engine], "b"))
            if self.args.restore:
                for engine in ENGINES:
                    dest = self.path("restored-%s" % engine)
                    self.record(engine, -1, repeat, self.restore(
                        engine, containers[engine], "b", dest))
                    shutil.rmtree(dest, ignore_errors=True)

    def record(self, engine: str, level: int, repeat: int,
               run: Run | None) -> None:
        what = "restore" if level < 0 else "level %d" % level
        if run is None:
            log("%-7s %-8s run %d: failed" % (engine, what, repeat))
        else:
            log("%-7s %-8s run %d: %6.2f s  %6.1f MB" % (
                engine, what, repeat, run.seconds, run.rss_mb))
        self.rows.append((engine, level, str(repeat), run))

    def table(self) -> str:
        ops = sorted({lvl for _e, lvl, _r, _run in self.rows},
                     key=lambda level: (level < 0, level))
        out = ["| operation | run | ours s | tar s | ours/tar time | "
               "ours MB | tar MB | ours/tar RSS |",
               "|---|---|---|---|---|---|---|---|"]
        ratios: dict[int, list[float]] = {}
        peak = 0.0
        failed = False
        for lvl in ops:
            what = "restore" if lvl < 0 else "backup level %d" % lvl
            for repeat in sorted({r for _e, l, r, _ in self.rows if l == lvl}):
                got = {e: run for e, l, r, run in self.rows
                       if l == lvl and r == repeat}
                ours, tar = got["rsyncv2"], got["tar"]
                if ours is None:
                    failed = True
                    out.append("| %s | %s | failed | | | | | |" % (what, repeat))
                    continue
                peak = max(peak, ours.rss_mb)
                if tar is None:
                    out.append("| %s | %s | %.2f | failed | | %.0f | | |" % (
                        what, repeat, ours.seconds, ours.rss_mb))
                    continue
                ratios.setdefault(lvl, []).append(ours.seconds / tar.seconds)
                out.append("| %s | %s | %.2f | %.2f | %.2f | %.0f | %.0f | %.2f |"
                           % (what, repeat, ours.seconds, tar.seconds,
                              ours.seconds / tar.seconds, ours.rss_mb,
                              tar.rss_mb, ours.rss_mb / tar.rss_mb))
        out.append("")
        if 0 in ratios:
            out.append("level 0 time ours/tar: %s (target <= 0.50)" % ", ".join(
                "%.2f" % r for r in ratios[0]))
        out.append("our peak RSS: %.0f MB (limit %.0f MB)%s" % (
            peak, RSS_LIMIT_MB, "; some of our runs FAILED" if failed else ""))
        return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--venv", default=os.path.join(tempfile.gettempdir(),
                                                  "rsyncv2-bench-agent-venv"),
                   help="venv with freezer-agent (created and filled if "
                        "missing; this checkout is reinstalled every run)")
    p.add_argument("--workdir", help="where the tree and containers go "
                                     "(default: a temporary directory)")
    p.add_argument("--source-mb", type=int, default=72,
                   help="MiB of small source-like files (default 72)")
    p.add_argument("--big-files", type=int, default=6)
    p.add_argument("--big-mb", type=int, default=30)
    p.add_argument("--compression", default="gzip",
                   choices=("gzip", "bzip2", "xz"))
    p.add_argument("--storage", default="local", choices=("local", "s3"),
                   help="where the backups go: a local directory, or an "
                        "S3-API server (moto) on 127.0.0.1")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--restore", action="store_true",
                   help="also restore the newest level with each engine")
    return p.parse_args(argv)


@contextlib.contextmanager
def s3_server(storage: str) -> Iterator[Any]:
    """The S3-API server of the integration tests for ``--storage s3``, else None."""
    if storage != "s3":
        yield None
        return
    from tests.s3server import S3Server
    with S3Server.start() as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not GNU_TIME:
        log("GNU time (/usr/bin/time) is needed to measure peak RSS")
        return 1
    work = args.workdir or tempfile.mkdtemp(prefix="bench-agent-")
    os.makedirs(work, exist_ok=True)
    try:
        agent = prepare_venv(os.path.abspath(args.venv), work)
        src = os.path.join(work, "src")
        stamp = os.path.join(work, "tree-%d-%d-%d" % (
            args.source_mb, args.big_files, args.big_mb))
        if os.path.exists(stamp):       # a --workdir kept from an earlier run
            files = sum(len(n) for _d, _s, n in os.walk(src))
            total = tree_size(src)
        else:
            shutil.rmtree(src, ignore_errors=True)
            start = time.perf_counter()
            files, total = make_tree(src, args.source_mb, args.big_files,
                                     args.big_mb)
            open(stamp, "w").close()
            log("generated %d files, %.0f MB, in %.1f s"
                % (files, total / 1e6, time.perf_counter() - start))
        from tests.integration.keystone_stub import KeystoneStub
        with KeystoneStub() as keystone, s3_server(args.storage) as s3:
            os.environ.update(keystone.env(), HOME=work, LC_ALL="C.UTF-8",
                              TZ="UTC")
            for k in [k for k in os.environ if k.startswith(
                    ("PYTHON", "FREEZER_RSYNCV2_"))]:
                del os.environ[k]
            bench = Bench(args, work, agent, s3)
            bench.run()
        print("freezer-agent 19.0.0, --storage %s --compression %s, tree "
              "%d files %.0f MB (%d x %d MiB random)\n" % (
                  args.storage, args.compression, files, total / 1e6,
                  args.big_files, args.big_mb))
        print(bench.table())
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
