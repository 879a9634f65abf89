"""Benchmark: our level 0/1 backups and restores against rdiff and tar on the same data, as ratios.

Run from a checkout: ``python benchmarks/bench_delta.py [--size MiB]``.  Every
operation runs in a child process (peak RSS from wait4); each is repeated and
the median is reported; every restored or patched file is compared byte for
byte with what was backed up.  See ``--help`` for the cases.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import bench_data as data  # noqa: E402
import bench_storage  # noqa: E402
from bench_report import Report, Row  # noqa: E402
from bench_run import GNU_TIME, Run, run_command, run_ours  # noqa: E402
from freezer_rsyncv2.rsync.signature import block_size_for  # noqa: E402

MIB = 1 << 20
CASES = ("random", "nomatch", "zeros", "text", "chain", "encrypted")
CHAIN_LEVELS = 7
DEFAULT_SEGMENT = 32 * MIB        # the engine's and Freezer's default
RSS_LIMIT_MB = 150.0
FILE = "data.bin"


class VerifyError(RuntimeError):
    """A restored or patched file differs from what was backed up."""


class Bench:
    """Runs the cases of one invocation and fills the report."""

    def __init__(self, args: argparse.Namespace, work: str) -> None:
        self.args = args
        self.work = work
        self.report = Report()
        self.rdiff = shutil.which("rdiff")
        self.tar = shutil.which("tar")
        self.size = args.size * MIB
        self.block = args.block_size or block_size_for(self.size)
        self.store = bench_storage.TARGETS[args.storage](self.path("store"))
        self._inputs: dict[str, str] = {}
        self._encrypt_key: str | None = None      # pass file of the encrypted case
        self._startups: list[float] = []

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # -- inputs ---------------------------------------------------------------
    def input(self, name: str) -> str:
        """Generate (once) and return the path of a named input file."""
        if name in self._inputs:
            return self._inputs[name]
        path = self.path("inputs", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        kind, _, role = name.partition("-")
        fill = data.FILLERS.get(kind, data.random_bytes)
        seeds = {"random": 1, "text": 3, "zeros": 5, "unrelated": 7}
        start = time.perf_counter()
        if role == "new":
            data.write_edited(self.input(kind + "-old"), path, seeds[kind] + 100, fill)
        else:
            data.write_file(path, self.size, seeds[kind], fill)
        # distinct mtimes, so a same-size replacement is never taken as unchanged
        stamp = time.time() - (1000 if role == "old" else 0)
        os.utime(path, (stamp, stamp))
        self.log("generated %s (%d bytes) in %.1f s"
                 % (name, os.path.getsize(path), time.perf_counter() - start))
        self._inputs[name] = path
        return path

    # -- measured operations ---------------------------------------------------
    def _add(self, case: str, op: str, run: Run, input_bytes: int,
             output: int | None = None, meta: int | None = None) -> Row:
        row = self.report.row(case, op, input_bytes)
        row.series.add(run)
        row.output_bytes = output if output is not None else run.report.get("stored")
        row.meta_bytes = meta if meta is not None else run.report.get("manifest")
        self.log("  %-8s %-34s %8.3f s  %6.0f MB RSS"
                 % (case, op, run.seconds, run.rss_mb))
        return row

    def _spec(self, **spec) -> dict:
        spec.update(storage=self.store.spec(), max_segment_size=self.args.max_segment_size,
                    block_size=self.args.block_size, compression="none",
                    encrypt_key=self._encrypt_key)
        return spec

    def backup(self, case: str, op: str, source: str, input_bytes: int) -> Run:
        run = run_ours(self._spec(op="backup", source=source, name="bench_" + case))
        self._startups.append(run.startup)
        self._add(case, op, run, input_bytes)
        return run

    def restore(self, case: str, op: str, expected: str) -> None:
        dest = self.path(case, "restored")
        shutil.rmtree(dest, ignore_errors=True)
        run = run_ours(self._spec(op="restore", dest=dest, name="bench_" + case))
        size = os.path.getsize(expected)
        self._add(case, op, run, size, output=size)
        self.verify(os.path.join(dest, FILE), expected)
        shutil.rmtree(dest)

    def tool(self, case: str, op: str, argv: list[str], input_bytes: int,
             output: str | None = None) -> Run:
        if output is not None and os.path.exists(output):
            os.unlink(output)
        run = run_command(argv)
        if output is not None:
            run.seconds += self.store.ship(output)
        self._add(case, op, run, input_bytes,
                  output=os.path.getsize(output) if output else None)
        return run

    def verify(self, got: str, expected: str) -> None:
        if not data.same_content(got, expected):
            raise VerifyError("%s differs from %s" % (got, expected))

    # -- cases ----------------------------------------------------------------
    def swap(self, src: str, target: str) -> None:
        """Make src/FILE the file ``target`` (a hard link: nothing is copied)."""
        os.makedirs(src, exist_ok=True)
        link = os.path.join(src, FILE)
        if os.path.lexists(link):
            os.unlink(link)
        os.link(target, link)

    def pair_case(self, case: str, old: str, new: str, refs: str) -> None:
        for rep in range(self.args.repeat):
            self.pair_once(case, old, new, refs, rep)

    def pair_once(self, case: str, old: str, new: str, refs: str, rep: int) -> None:
        src = self.path(case, "src")
        self.log("[%s] repeat %d/%d" % (case, rep + 1, self.args.repeat))
        self.store.reset()
        self.swap(src, old)
        self.backup(case, "ours level 0", src, os.path.getsize(old))
        self.swap(src, new)
        self.backup(case, "ours level 1", src, os.path.getsize(new))
        self.restore(case, "ours restore 0+1", new)
        if self.rdiff and refs != "none":
            self.rdiff_ops(case, old, new, refs)
        if self.tar and refs == "full":
            self.tar_ops(case, old)

    def random_and_encrypted(self, cases: list[str]) -> None:
        """The random pair, and again encrypted: each repeat of one right after
        the other's, so the encryption ratio compares runs made under the same
        load (the machine may be shared)."""
        old, new = self.input("random-old"), self.input("random-new")
        key = self.path("pass-file")
        with open(key, "w") as f:
            f.write("benchmark passphrase\n")
        for rep in range(self.args.repeat):
            if "random" in cases:
                self.pair_once("random", old, new, "full", rep)
            if "encrypted" in cases:
                self._encrypt_key = key
                try:
                    self.pair_once("encrypted", old, new, "none", rep)
                finally:
                    self._encrypt_key = None

    def rdiff_ops(self, case: str, old: str, new: str, refs: str) -> None:
        rd = [self.rdiff, "-f"]
        b = ["-b", str(self.block)]
        p = lambda name: self.path(case, name)  # noqa: E731
        os_, ns = os.path.getsize(old), os.path.getsize(new)
        if refs == "delta":
            if not os.path.exists(p("old.sig")):
                run_command(rd + b + ["signature", old, p("old.sig")])
            self.tool(case, "rdiff delta -b", rd + ["delta", p("old.sig"), new, p("d")],
                      ns, p("d"))
            return
        self.tool(case, "rdiff signature old -b", rd + b + ["signature", old, p("old.sig")],
                  os_, p("old.sig"))
        self.tool(case, "rdiff delta -b", rd + ["delta", p("old.sig"), new, p("d")],
                  ns, p("d"))
        self.tool(case, "rdiff signature new -b", rd + b + ["signature", new, p("new.sig")],
                  ns, p("new.sig"))
        self.tool(case, "rdiff patch", rd + ["patch", old, p("d"), p("patched")],
                  ns, p("patched"))
        self.verify(p("patched"), new)
        os.unlink(p("patched"))
        if refs != "full":
            return
        self.tool(case, "rdiff signature old (default)", rd + ["signature", old, p("old.dsig")],
                  os_, p("old.dsig"))
        self.tool(case, "rdiff delta (default)", rd + ["delta", p("old.dsig"), new, p("dd")],
                  ns, p("dd"))
        self.tool(case, "rdiff signature new (default)", rd + ["signature", new, p("new.dsig")],
                  ns, p("new.dsig"))

    def tar_ops(self, case: str, old: str) -> None:
        top = self.path(case)
        self.swap(os.path.join(top, "tarsrc"), old)
        tarfile = self.path(case, "ref.tar")
        size = os.path.getsize(old)
        self.tool(case, "tar -cf", [self.tar, "-cf", tarfile, "-C", top, "tarsrc"],
                  size, tarfile)
        self.tool(case, "tar -cf + fsync",
                  ["sh", "-c", 'tar -cf "$1" -C "$2" tarsrc && sync "$1"', "sh",
                   tarfile, top], size, tarfile)
        dest = self.path(case, "untar")
        shutil.rmtree(dest, ignore_errors=True)
        os.makedirs(dest)
        self.tool(case, "tar -x", [self.tar, "-xf", tarfile, "-C", dest], size)
        self.verify(os.path.join(dest, "tarsrc", FILE), old)
        shutil.rmtree(dest)
        os.unlink(tarfile)

    def chain_case(self) -> None:
        """One file, 7 levels of 100 in-place 4 KiB edits; restore level 0 vs all 7."""
        case = "chain"
        size = self.args.chain_size * MIB
        src = self.path(case, "src")
        os.makedirs(src, exist_ok=True)
        live = os.path.join(src, FILE)
        data.write_file(live, size, 11)
        self.store.reset()
        self.log("[chain] %d MiB, %d levels" % (self.args.chain_size, CHAIN_LEVELS))
        self.backup(case, "ours level 0", src, size)
        for _rep in range(self.args.repeat):
            self.restore(case, "ours restore level 0", live)
        for level in range(1, CHAIN_LEVELS):
            data.overwrite_in_place(live, 1000 + level)
            self.backup(case, "ours level 1..6 (100 x 4 KiB)", src, size)
        for _rep in range(self.args.repeat):
            self.restore(case, "ours restore levels 0..6", live)

    def run(self, cases: list[str]) -> None:
        if not self.rdiff:
            self.report.note("rdiff is not installed: its rows and the targets against it "
                             "are skipped (apt-get install rdiff)")
        if not self.tar:
            self.report.note("tar is not installed: its rows and targets are skipped")
        if not GNU_TIME:
            self.report.note("GNU time is not installed: peak RSS comes from wait4 and includes "
                             "the benchmark's own size (apt-get install time)")
        paired = False
        for case in cases:
            if case in ("random", "encrypted"):
                if not paired:
                    self.random_and_encrypted(cases)
                paired = True
            elif case == "nomatch":
                self.pair_case(case, self.input("random-old"), self.input("unrelated"),
                               "delta")
            elif case in ("zeros", "text"):
                self.pair_case(case, self.input(case + "-old"), self.input(case + "-new"),
                               "basic")
            elif case == "chain":
                self.chain_case()
        self.targets()

    # -- targets ----------------------------------------------------------------
    def targets(self) -> None:
        r, get = self.report, self.report.get
        l0, l1 = get("random", "ours level 0"), get("random", "ours level 1")
        delta, sig_new = get("random", "rdiff delta -b"), get("random", "rdiff signature new -b")
        if l1 and delta and sig_new:
            r.target("incremental: level 1 <= 0.5 x (rdiff delta + signature new)", l1,
                     delta.series.seconds + sig_new.series.seconds, 0.5)
            r.target("delta bytes, same block size (%d)" % self.block, l1, delta, 1.02,
                     value=lambda row: row.output_bytes, unit="B")
        ddef = get("random", "rdiff delta (default)")
        sdef = get("random", "rdiff signature new (default)")
        if l1 and ddef and sdef:
            r.target("level 1 + manifest <= rdiff default delta + signature",
                     l1.output_bytes + l1.meta_bytes, ddef.output_bytes + sdef.output_bytes,
                     1.0, unit="B")
        rate = lambda row: row.input_bytes / 1e6 / row.series.seconds  # noqa: E731
        r.target("no match: level 1 throughput >= 1.5 x rdiff delta",
                 get("nomatch", "ours level 1"), get("nomatch", "rdiff delta -b"), 1.5,
                 at_least=True, value=rate, unit="MB/s")
        for case in ("zeros", "text"):
            for op in ("ours level 0", "ours level 1", "ours restore 0+1"):
                if get(case, op) and get("random", op):
                    r.target("low entropy (%s): %s <= 2 x random" % (case, op),
                             get(case, op), get("random", op), 2.0)
        for op in ("ours level 0", "ours level 1"):
            enc, plain = get("encrypted", op), get("random", op)
            if enc and plain:
                r.target("encryption: %s <= 1.1 x unencrypted" % op, enc, plain, 1.1)
                self.key_note(op, enc, plain)
        restore = get("random", "ours restore 0+1")
        untar, patch = get("random", "tar -x"), get("random", "rdiff patch")
        if restore and untar and patch:
            r.target("restore 0+1 <= 1.3 x (tar -x + rdiff patch)", restore,
                     untar.series.seconds + patch.series.seconds, 1.3)
        r.target("chain: restore 7 levels <= 1.5 x restore level 0",
                 get("chain", "ours restore levels 0..6"), get("chain", "ours restore level 0"),
                 1.5)
        r.target("level 0 <= 1.3 x tar -cf + fsync (both durable)", l0,
                 get("random", "tar -cf + fsync"), 1.3)
        r.target("level 0 <= 1.3 x tar -cf (tar leaves dirty pages)", l0,
                 get("random", "tar -cf"), 1.3)
        ours = [row for row in r.rows.values() if row.op.startswith("ours") and row.series.runs]
        if ours:
            worst = max(ours, key=lambda row: row.series.rss_mb)
            r.target("peak RSS <= %.0f MB (worst: %s, %s)" % (RSS_LIMIT_MB, worst.case, worst.op),
                     worst.series.rss_mb, RSS_LIMIT_MB, 1.0, unit="MB")
        if self._startups:
            self._startups.sort()
            r.note("our operations run through the Python API in a child process; their times "
                   "exclude interpreter start and imports (median %.2f s), paid once inside "
                   "freezer-agent" % self._startups[len(self._startups) // 2])
        if self.args.max_segment_size != DEFAULT_SEGMENT:
            r.note("max segment size %d MiB (default 32 MiB): backup and restore each hold two "
                   "segments (the one being stored or restored and the next), so peak RSS "
                   "moves by 2 x the difference" % (self.args.max_segment_size // MIB))

    def key_note(self, op: str, enc: Row, plain: Row) -> None:
        """How much of the encryption cost is the wait for the key derivation
        (once per process: Argon2id or scrypt on the passphrase)."""
        waits = [run.report.get("key_wait") for run in enc.series.runs]
        derives = [run.report.get("key_derive") for run in enc.series.runs]
        if not waits or None in waits or None in derives:
            return
        wait, derive = statistics.median(waits), statistics.median(derives)
        self.report.note(
            "encryption, %s: %.3f s more than unencrypted, of which %.3f s waiting for the "
            "key derivation (median; it took %.3f s, once per process); without that wait "
            "%.2f x" % (op, enc.series.seconds - plain.series.seconds, wait, derive,
                        (enc.series.seconds - wait) / plain.series.seconds))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="MiB per file (default 512)")
    p.add_argument("--cases", default=",".join(CASES),
                   help="comma-separated, from %s (default: all)" % ", ".join(CASES))
    p.add_argument("--repeat", type=int, default=3, help="runs per operation (median)")
    p.add_argument("--storage", choices=sorted(bench_storage.TARGETS), default="local")
    p.add_argument("--workdir", help="directory for data (default: a temporary one); "
                                     "a subdirectory is made and removed at the end")
    p.add_argument("--chain-size", type=int, default=1024, help="MiB of the chain case's file")
    p.add_argument("--max-segment-size", type=int, default=DEFAULT_SEGMENT,
                   help="bytes per stored segment (default 32 MiB, the engine's default)")
    p.add_argument("--block-size", type=int, default=None,
                   help="fixed rsync block size (default: the engine's sqrt rule)")
    args = p.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        p.error("unknown case(s): %s" % ", ".join(sorted(unknown)))
    if args.repeat < 1 or args.size < 1 or args.chain_size < 1:
        p.error("--size, --chain-size and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench-delta-", dir=args.workdir)
    bench = Bench(args, work)
    try:
        bench.run(args.cases)
    finally:
        bench.store.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print("bench_delta: %d MiB files, block size %d, storage %s, %d runs each, medians"
          % (args.size, bench.block, args.storage, args.repeat))
    print(bench.report.render())
    return 0 if all(t.passed for t in bench.report.targets) else 1


if __name__ == "__main__":
    sys.exit(main())
