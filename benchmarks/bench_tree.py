"""Benchmark: trees of many small files and a source-tree update, next to restic and borg.

Run from a checkout: ``python benchmarks/bench_tree.py [--files N] [--jobs ...] [--quick]``.
Three jobs, each tool on its own store:

- ``small``: ``--files`` small files (default 100,000 of 200-4,000 seeded
  random bytes, about 40 a directory) get a level 0; then 1 % of them are
  appended to and a level 1 runs; then each tool restores its latest backup
  into an empty directory, which is compared with the source byte for byte.
- ``nochange`` (after ``small``, on its tree and stores): a level with
  nothing changed.
- ``update``: a Django-like source tree made here in two versions
  (``--source-files`` code-like text files; ``--changed`` of them edited in a
  few lines; every file's mtime differs between the versions): level 0 of
  the first, level 1 of the second.  What the level 1 adds to the store
  (data, manifest, metadata: the growth of the store directory, restic's and
  borg's repository) is set beside rsync's batch for the same update
  (``rsync -a --only-write-batch=FILE v2/ v1/``) after ``zstd -3``.

Ours is the CLI with ``--compression zstd``; restic runs with its defaults,
borg with ``-e none`` and ``--compression zstd,3`` (bench_vm.py's command
lines).  Every step is one child process (wall time with interpreter start,
peak RSS from GNU time) with what it reads in the page cache (read first:
borg drops what it reads from the cache) and nothing left to write back
(``sync`` first); a tool that is not on PATH is skipped.  Exit code: 0
every target that could be computed passed, 1 a target failed, 2 a tool
failed or a restore differs.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

from bench_agent import source_text  # noqa: E402
from bench_data import same_content  # noqa: E402
from bench_report import _format, _n, finish  # noqa: E402
from bench_run import GNU_TIME, ChildFailed, run_command, work_directory  # noqa: E402
from bench_vm import Bench as VmBench, Tool, VmReport, tree_bytes, version  # noqa: E402

TOOLS = ("ours", "restic", "borg")
JOBS = ("small", "nochange", "update")
RSS_LIMIT_MB = 150.0
NOCHANGE_LIMIT = 64 * 1024 - 1          # "< 64 KiB"
SEED = 20251115
NS = 10 ** 9
STAMP = 1_700_000_000 * NS              # every mtime of the generated trees
PER_DIR = 40
QUICK = {"files": 3000, "source_files": 700, "changed": 8}
FULL = {"files": 100_000, "source_files": 6900, "changed": 44}

# op -> (job, step) as the table shows them; bench_vm.Tool reads "init",
# "restore" and, for borg's archive name, the op's last character.
STEPS = {
    "level 0": ("small files", "level 0"),
    "level 1": ("small files", "level 1, 1 % appended"),
    "restore": ("small files", "restore latest"),
    "level 2": ("small files", "level 2, no change"),
    "update level 0": ("source update", "level 0 of v1"),
    "update level 1": ("source update", "level 1 of v2"),
}
RSYNC = "rsync"                         # the row of rsync's batch

# -- the trees ---------------------------------------------------------------------


def set_mtimes(root: str, ns: int) -> None:
    """Every file's and directory's mtime (and atime) to ``ns``, directories last."""
    for top, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.utime(os.path.join(top, name), ns=(ns, ns))
        os.utime(top, ns=(ns, ns))


def write_small_tree(root: str, count: int, seed: int) -> list[str]:
    """``count`` files of 200-4,000 random bytes, ``PER_DIR`` a directory; their paths."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(200, 4001, count).tolist()
    paths = []
    for first in range(0, count, PER_DIR):
        d = first // PER_DIR
        folder = os.path.join(root, "d%03d" % (d // 64), "s%02d" % (d % 64))
        os.makedirs(folder)
        batch = sizes[first:first + PER_DIR]
        blob, pos = rng.bytes(sum(batch)), 0
        for i, size in enumerate(batch):
            path = os.path.join(folder, "f%06d.bin" % (first + i))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, blob[pos:pos + size])
            finally:
                os.close(fd)
            pos += size
            paths.append(path)
    set_mtimes(root, STAMP)
    return paths


def append_to_some(paths: list[str], seed: int, share: float = 0.01) -> int:
    """Append 16-1,024 random bytes to ``share`` of the files (mtime one minute later);
    returns how many."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(paths), max(1, int(len(paths) * share)), replace=False)
    for i in sorted(picked.tolist()):
        with open(paths[i], "ab") as out:
            out.write(rng.bytes(int(rng.integers(16, 1025))))
        os.utime(paths[i], ns=(STAMP + 60 * NS,) * 2)
    return len(picked)


LANGS = ("af ar ar_DZ ast az be bg bn br bs ca ckb cs cy da de dsb el en en_AU en_GB eo es es_AR "
         "es_CO es_MX es_VE et eu fa fi fr fy ga gd gl he hi hr hsb hu hy ia id ig io is it ja ka "
         "kab kk km kn ko ky lb lt lv mk ml mn mr ms my nb ne nl nn os pa pl pt pt_BR ro ru sk sl "
         "sq sr sr_Latn sv sw ta te tg th tk tr tt udm ug uk ur uz vi zh_Hans zh_Hant").split()
CONTRIB = ("admin admindocs auth contenttypes flatpages gis humanize messages postgres redirects "
           "sessions sitemaps sites staticfiles syndication").split()
CORE = ("apps conf core db dispatch forms http middleware template templatetags test urls utils "
        "views").split()
SUBDIRS = ("backends base handlers management commands migrations models fields sql serializers "
           "cache checks files mail servers signing templates static widgets generic").split()
MSG_WORDS = ("the a this field is required enter valid value please correct errors below "
             "delete selected object name date time user group permission save add change "
             "view history filter search page not found server error password email").split()
# kind -> (mu, sigma) of the lognormal size, bytes
SIZES = {"py": (8.3, 1.0), "po": (9.3, 0.7), "html": (7.0, 0.9), "js": (8.8, 1.2),
         "css": (8.0, 1.0), "txt": (7.5, 1.0)}


def plan_source_tree(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """(relative path, kind) of ``count`` files laid out like Django's package."""
    scale = count / FULL["source_files"]
    langs = LANGS[:max(2, round(len(LANGS) * scale))]
    apps = CONTRIB[:max(2, round(len(CONTRIB) * scale))]
    plan = []
    for lang in langs:
        base = "django/conf/locale/%s/" % lang
        plan += [(base + "__init__.py", "py"), (base + "formats.py", "py"),
                 (base + "LC_MESSAGES/django.po", "po")]
        plan += [("django/contrib/%s/locale/%s/LC_MESSAGES/django.po" % (app, lang), "po")
                 for app in apps]
    packages = ["django/" + p for p in CORE] + ["django/contrib/" + a for a in apps]
    n = 0
    while len(plan) < count:
        folder = "/".join([rng.choice(packages)] + rng.sample(SUBDIRS, rng.randint(0, 2)))
        for _ in range(rng.randint(3, 25)):
            if "templates" in folder:
                kind = "html"
            elif "static" in folder:
                kind = rng.choice(("js", "js", "css"))
            else:
                kind = rng.choice(("py",) * 9 + ("txt",))
            plan.append(("%s/%s_%d.%s" % (folder, rng.choice(SUBDIRS), n, kind), kind))
            n += 1
    return plan[:count]


def po_text(rng: random.Random, size: int) -> bytes:
    """About ``size`` bytes of gettext catalogue entries."""
    parts, total = ['msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=UTF-8\\n"\n'], 0
    while total < size:
        msg = " ".join(rng.choices(MSG_WORDS, k=rng.randint(1, 9)))
        entry = '\n#: %s.py:%d\nmsgid "%s"\nmsgstr "%s"\n' % (
            rng.choice(SUBDIRS), rng.randint(1, 2000), msg.capitalize(),
            " ".join(reversed(msg.split())))
        parts.append(entry)
        total += len(entry)
    return "".join(parts).encode()[:max(size, 1)]


def edit_text(data: bytes, rng: random.Random) -> bytes:
    """1-3 small hunks: 0-2 lines replaced by 1-3 new ones."""
    lines = data.splitlines(keepends=True)
    for _ in range(rng.randint(1, 3)):
        at = rng.randint(0, len(lines))
        new = source_text(rng, rng.randint(20, 120)).splitlines(keepends=True)
        lines[at:at + rng.randint(0, 2)] = [line if line.endswith(b"\n") else line + b"\n"
                                            for line in new]
    return b"".join(lines)


def write_source_trees(v1: str, v2: str, count: int, changed: int, seed: int
                       ) -> tuple[int, int]:
    """Two versions of a source tree: ``changed`` files edited, every mtime different.

    Returns (bytes of v1, bytes of v2)."""
    rng = random.Random(seed)
    plan = plan_source_tree(count, rng)
    for rel, kind in plan:
        mu, sigma = SIZES[kind]
        size = int(min(max(rng.lognormvariate(mu, sigma), 30), 200_000))
        path = os.path.join(v1, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(po_text(rng, size) if kind == "po" else source_text(rng, size))
    set_mtimes(v1, STAMP)
    shutil.copytree(v1, v2)
    for rel, _kind in rng.sample(plan, min(changed, len(plan))):
        path = os.path.join(v2, rel)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as out:
            out.write(edit_text(data, rng))
    set_mtimes(v2, STAMP + 86400 * NS)
    return tree_bytes(v1), tree_bytes(v2)


def compare_trees(expected: str, got: str) -> tuple[str | None, int, int]:
    """(difference or None, files compared, bytes compared): the same directories
    and files, each file's bytes the same."""
    def listing(root: str) -> tuple[set[str], set[str]]:
        dirs, files = set(), set()
        for top, names, leaves in os.walk(root):
            rel = os.path.relpath(top, root)
            dirs.update(os.path.normpath(os.path.join(rel, n)) for n in names)
            files.update(os.path.normpath(os.path.join(rel, n)) for n in leaves)
        return dirs, files
    (dirs_a, files_a), (dirs_b, files_b) = listing(expected), listing(got)
    for what, a, b in (("directories", dirs_a, dirs_b), ("files", files_a, files_b)):
        if a != b:
            missing, extra = sorted(a - b), sorted(b - a)
            return "%s missing %s, extra %s" % (what, missing[:3], extra[:3]), 0, 0
    done = 0
    for rel in sorted(files_a):
        if not same_content(os.path.join(expected, rel), os.path.join(got, rel)):
            return "%s differs" % rel, 0, 0
        done += os.path.getsize(os.path.join(expected, rel))
    return None, len(files_a), done


# -- the runs -----------------------------------------------------------------------


class TreeReport(VmReport):
    """Rows are (tool, op); the table shows them by job and step, then tool."""

    def table(self) -> str:
        lines = [("job: step", "tool", "seconds", "stored bytes", "peak RSS MB")]
        tools = TOOLS + (RSYNC,)
        order = lambda row: (list(STEPS).index(row.op), tools.index(row.case))  # noqa: E731
        for row in sorted(self.rows.values(), key=order):
            if row.series.runs:
                tool = "rsync batch, zstd -3" if row.case == RSYNC else row.case
                lines.append(("%s: %s" % STEPS[row.op], tool, "%.3f" % row.series.seconds,
                              _n(row.output_bytes), "%.0f" % row.series.rss_mb))
        return _format(lines)


class Bench(VmBench):
    """Runs the jobs tool by tool (bench_vm's steps and targets) and fills the report."""

    def __init__(self, args: argparse.Namespace, work: str) -> None:
        self.args, self.work = args, work
        self.report = TreeReport()
        self.size = 0                           # a row's input bytes: the tree's
        self.failed: dict[str, str] = {}
        self.broken = False
        self.names = []
        for name in args.tools:
            if Tool(name, work, work).path:
                self.names.append(name)
            else:
                self.failed[name] = "%s not installed" % name
                self.report.note("%s is not installed: skipped" % name)
                self.log("%s is not installed: skipped" % name)

    def tools(self, job: str, src: str) -> list[Tool]:
        """Each tool with its home (store, caches, restore target) under ``job``."""
        tools = [Tool(name, os.path.join(self.work, job), src) for name in self.names]
        for tool in tools:
            os.makedirs(tool.home)
            self.step(tool, "init", record=False)
        return tools

    def run(self) -> None:
        if "small" in self.args.jobs:
            self.small()
        if "update" in self.args.jobs:
            self.update()
        self.targets()

    def small(self) -> None:
        src = os.path.join(self.work, "small", "src")
        paths = write_small_tree(src, self.args.files, SEED)
        self.size = tree_bytes(src)
        self.log("small files: %s files, %s bytes" % (_n(len(paths)), _n(self.size)))
        tools = self.tools("small", src)
        for tool in tools:
            self.step(tool, "level 0")
        appended = append_to_some(paths, SEED + 1)
        self.size = tree_bytes(src)
        self.log("appended to %s files" % _n(appended))
        for tool in tools:
            self.step(tool, "level 1")
        for tool in tools:
            os.makedirs(tool.dest)
            if self.step(tool, "restore"):
                self.check(tool.name, src, tool.dest)
            shutil.rmtree(tool.dest)
        if "nochange" in self.args.jobs:
            for tool in tools:
                self.step(tool, "level 2")
        if not self.args.keep:
            shutil.rmtree(os.path.join(self.work, "small"))

    def check(self, name: str, src: str, dest: str) -> None:
        diff, files, done = compare_trees(src, dest)
        if diff:
            self.broken = True
            self.report.checks.append("%s restore: DIFFERS from the source: %s" % (name, diff))
        else:
            self.report.checks.append("%s restore: identical to the source (%s files, %s bytes "
                                      "compared)" % (name, _n(files), _n(done)))

    def update(self) -> None:
        base = os.path.join(self.work, "update")
        v1, v2, src = (os.path.join(base, n) for n in ("v1", "v2", "src"))
        size1, self.size = write_source_trees(v1, v2, self.args.source_files,
                                              self.args.changed, SEED + 2)
        self.log("source update: %s files, %s -> %s bytes, %d edited, every mtime changed" % (
            _n(self.args.source_files), _n(size1), _n(self.size), self.args.changed))
        os.rename(v1, src)
        tools = self.tools("update", src)
        for tool in tools:
            self.step(tool, "update level 0")
        os.rename(src, v1)
        os.rename(v2, src)
        for tool in tools:
            self.step(tool, "update level 1")
        self.rsync_batch(src, v1, os.path.join(base, "batch"))
        if not self.args.keep:
            shutil.rmtree(base)

    def rsync_batch(self, new: str, old: str, batch: str) -> None:
        """rsync's batch updating ``old`` to ``new`` (written, not applied), after zstd -3."""
        rsync, zstd = shutil.which("rsync"), shutil.which("zstd")
        if not rsync or not zstd:
            self.report.note("rsync or zstd is not installed: no batch to compare with")
            return
        try:
            run = run_command([rsync, "-a", "--only-write-batch=" + batch, new + "/", old + "/"])
        except ChildFailed as exc:
            self.report.note("rsync failed: %s" % str(exc).strip())
            return
        subprocess.run([zstd, "-3", "-q", "-f", batch, "-o", batch + ".zst"], check=True)
        row = self.report.row(RSYNC, "update level 1", self.size)
        row.series.add(run)
        row.output_bytes = os.path.getsize(batch + ".zst")
        self.report.note("rsync's batch: %s bytes, %s after zstd -3 (its time: rsync's alone)" % (
            _n(os.path.getsize(batch)), _n(row.output_bytes)))
        self.log("  rsync  batch    %8.3f s  %s bytes after zstd -3" % (run.seconds, _n(row.output_bytes)))

    # -- targets ------------------------------------------------------------------
    def value(self, tool: str, op: str, stored: bool = False) -> float | None:
        row = self.report.get(tool, op)
        if row is None:
            return None
        return row.output_bytes if stored else row.series.seconds

    def targets(self) -> None:
        jobs = self.args.jobs
        if "small" in jobs:
            for op, ref, limit in (("level 0", "restic", 1.0), ("level 1", "restic", 0.5),
                                   ("restore", "borg", 1.0)):
                self.target("small files: ours %s time <= %.1f x %s's" % (op, limit, ref), ref,
                            self.value("ours", op), self.value(ref, op), limit)
        if "update" in jobs:
            self.target("source update: ours level 1 time <= 1.0 x borg's", "borg",
                        self.value("ours", "update level 1"), self.value("borg", "update level 1"), 1.0)
            self.target("source update: ours level 1 bytes <= 1.0 x rsync's batch after zstd -3",
                        RSYNC, self.value("ours", "update level 1", stored=True),
                        self.value(RSYNC, "update level 1", stored=True), 1.0, unit="B")
        if "nochange" in jobs:
            self.target("no change: ours level stored < 64 KiB", None,
                        self.value("ours", "level 2", stored=True), NOCHANGE_LIMIT, 1.0, unit="B")
            self.target("no change: ours level time < 0.5 x restic's", "restic",
                        self.value("ours", "level 2"), self.value("restic", "level 2"), 0.5)
        ours = [r for r in self.report.rows.values() if r.case == "ours" and r.series.runs]
        worst = None if "ours" in self.failed or not ours else max(ours, key=lambda r: r.series.rss_mb)
        self.target("ours peak RSS <= %.0f MB in every step%s" % (
            RSS_LIMIT_MB, " (worst: %s: %s)" % STEPS[worst.op] if worst else ""), None,
            worst.series.rss_mb if worst else None, RSS_LIMIT_MB, 1.0, unit="MB")
        if not GNU_TIME:
            self.report.note("GNU time is not installed: peak RSS comes from wait4 "
                             "(apt-get install time)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, help="small files (default %s; --quick %s)" % (
        _n(FULL["files"]), _n(QUICK["files"])))
    p.add_argument("--source-files", type=int, help="files of the source tree (default %s; "
                   "--quick %s)" % (_n(FULL["source_files"]), _n(QUICK["source_files"])))
    p.add_argument("--changed", type=int, help="source files edited between the versions "
                   "(default %d; --quick %d)" % (FULL["changed"], QUICK["changed"]))
    p.add_argument("--quick", action="store_true", help="small sizes: a check that it runs")
    p.add_argument("--jobs", default=",".join(JOBS),
                   help="comma-separated, from %s (default: all)" % ", ".join(JOBS))
    p.add_argument("--tools", default=",".join(TOOLS),
                   help="comma-separated, from %s (default: all)" % ", ".join(TOOLS))
    p.add_argument("--workdir", help="directory for data (default: a temporary one); "
                                     "a subdirectory is made and removed at the end")
    p.add_argument("--keep", action="store_true", help="keep the data (trees, stores) and "
                                                       "print where it is")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.tools = [t for t in args.tools.split(",") if t]
    args.jobs = [j for j in args.jobs.split(",") if j]
    unknown = (set(args.tools) - set(TOOLS)) | (set(args.jobs) - set(JOBS))
    if unknown:
        p.error("unknown tool(s) or job(s): %s" % ", ".join(sorted(unknown)))
    if "nochange" in args.jobs and "small" not in args.jobs:
        p.error("the job nochange runs on the tree and stores of the job small")
    if args.files < 1 or args.source_files < 10 or not 0 <= args.changed <= args.source_files:
        p.error("--files must be >= 1, --source-files >= 10, --changed from 0 to --source-files")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with work_directory(args.workdir, "bench-tree-", args.keep) as work:
        bench = Bench(args, work)
        bench.run()
    print("bench_tree: jobs %s; %s small files (1 %% appended to), a source tree of %s files "
          "(%d edited, every mtime changed); one run each, page cache warm" % (
              ", ".join(args.jobs), _n(args.files), _n(args.source_files), args.changed))
    paths = {name: Tool(name, work, work).path for name in bench.names}
    if "restic" in paths:
        print("restic: %s, defaults" % version([paths["restic"], "version"]))
    if "borg" in paths:
        print("borg: %s, init -e none, create --compression zstd,3 (its defaults otherwise)"
              % version([paths["borg"], "--version"]))
    return finish(bench.report, "bench_tree", bench.broken)


if __name__ == "__main__":
    sys.exit(main())
