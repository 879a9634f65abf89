"""freezer-rsyncv2 command line: backup, restore, verify, list, ls, diff, cleanup; thin over the engine.

Exit codes: 0 success, 1 failure, 2 usage error, 3 finished with warnings
(entries skipped or changed while read), 128 + the signal's number when
stopped by SIGINT (130), SIGTERM (143) or SIGHUP (129) after removing what
the run had written (``interrupt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log

from freezer_rsyncv2 import errors
from freezer_rsyncv2 import interrupt
from freezer_rsyncv2 import inventory
from freezer_rsyncv2 import opts
from freezer_rsyncv2 import partial
from freezer_rsyncv2 import retention
from freezer_rsyncv2 import verify
from freezer_rsyncv2.cli_parser import OS_OPTIONS, build_parser
from freezer_rsyncv2.cli_output import (
    OneLineLogFilter, PrintableFormatter, TtyProgress, change_json, describe_sweep, entry_json, human_size,
    iso_time, level_json, long_line, print_json, printable, summary_json)
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.fs.walk import show_path
from freezer_rsyncv2.storage import factory
from freezer_rsyncv2.storage import sweep as sweeping

LOG = log.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_WARNINGS = (
    errors.EXIT_OK, errors.EXIT_FAILURE, errors.EXIT_USAGE, errors.EXIT_WARNINGS)


def _setup_logging(debug: bool, stderr: bool = False) -> None:
    """oslo.log's handlers, every line escaped; ``stderr``: log there, not on stdout."""
    conf = cfg.ConfigOpts()
    log.register_options(conf)
    conf(args=[], project="freezer-rsyncv2")
    conf.set_override("debug", debug)
    conf.set_override("use_stderr", stderr)
    theirs = set(logging.getLogger().handlers)     # e.g. a test runner's
    log.setup(conf, "freezer-rsyncv2")
    for handler in logging.getLogger().handlers:
        if handler in theirs:
            continue
        if not any(isinstance(f, OneLineLogFilter) for f in handler.filters):
            handler.addFilter(OneLineLogFilter())
        if not isinstance(handler.formatter, PrintableFormatter):
            handler.setFormatter(PrintableFormatter(handler.formatter))


def _engine(args: argparse.Namespace, storage, progress) -> rsyncv2.Rsyncv2Engine:
    conf = opts.load(args.config_file)
    group = conf[opts.GROUP]

    def pick(name: str, default_attr: str):
        value = getattr(args, name, None)
        return value if value not in (None, False, []) else group[default_attr]

    return rsyncv2.Rsyncv2Engine(
        storage=storage,
        compression=pick("compression", "compression"),
        encrypt_key=pick("encrypt_pass_file", "encrypt_pass_file"),
        symlinks="soft" if pick("dereference_symlink",
                                "dereference_symlink") else None,
        exclude=pick("exclude", "exclude"),
        max_segment_size=pick("max_segment_size", "max_segment_size"),
        rsync_block_size=pick("rsync_block_size", "rsync_block_size"),
        dry_run=getattr(args, "dry_run", False),
        progress=progress)


def _storage(args: argparse.Namespace, max_segment_size: int | None = None,
             skip_prepare: bool = False):
    """The storage of --storage/--container; reading needs it to exist."""
    if (args.storage == "local" and skip_prepare
            and not os.path.isdir(args.container)):
        raise errors.BackupNotFoundError(f"container {args.container} does not exist")
    return factory.build_storage(
        args.storage, args.container, max_segment_size=max_segment_size,
        skip_prepare=skip_prepare, endpoint=args.endpoint,
        access_key=args.access_key, secret_key=args.secret_key,
        os_options={name.replace("-", "_"): getattr(
            args, "os_" + name.replace("-", "_"))
            for name, _variable, _text in OS_OPTIONS})


def _name(args: argparse.Namespace) -> str:
    return f"{args.hostname}_{args.backup_name}"


def cmd_backup(args: argparse.Namespace, progress) -> int:
    if not os.path.lexists(args.path_to_backup):
        raise errors.SourceError(f"backup source {args.path_to_backup} does not exist")
    storage = _storage(args, args.max_segment_size)
    engine = _engine(args, storage, progress)
    conf = opts.load(args.config_file)[opts.GROUP]
    age = sweeping.resolve_age(args.sweep_age, conf.sweep_age)
    level = engine.backup(
        os.path.abspath(args.path_to_backup), _name(args),
        incremental=not args.no_incremental,
        max_level=args.max_level if args.max_level is not None
        else conf.max_level,
        always_level=args.always_level if args.always_level is not None
        else conf.always_level,
        restart_always_level=args.restart_always_level
        if args.restart_always_level is not None
        else conf.restart_always_level,
        sweep_age=age)
    s = engine.last_summary
    if progress is not None:
        progress.close()
    if args.json:
        sweep = engine.last_sweep
        print_json({"backup": _name(args), "level": level, "dry_run": bool(args.dry_run),
                    "summary": summary_json(s) if s is not None else None,
                    "swept": dataclasses.asdict(sweep) if sweep else None})
        return EXIT_WARNINGS if s is not None and s.partial else EXIT_OK
    print("%s level %d of %s%s" % ("dry run:" if args.dry_run else "backup",
                                   level, _name(args),
                                   " (nothing stored)" if args.dry_run else ""))
    if s is not None:
        print("  files: %d new, %d changed, %d metadata only, %d unchanged; "
              "%d entries deleted" % (s.files_new, s.files_changed,
                                      s.files_meta, s.files_unchanged,
                                      s.entries_deleted))
        print("  read %s, literal %s, copied %s, stored %s + manifest %s, "
              "%.2f s" % (human_size(s.bytes_read),
                          human_size(s.literal_bytes),
                          human_size(s.copied_bytes),
                          human_size(s.stored_bytes),
                          human_size(s.manifest_bytes), s.elapsed))
        if engine.last_sweep:
            print(f"  swept leftovers of interrupted runs: {describe_sweep(engine.last_sweep, age)}")
        if s.partial:
            print(f"  PARTIAL: {s.warning_count} warnings (see the log); exit code 3")
            return EXIT_WARNINGS
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, progress) -> int:
    storage = _storage(args, skip_prepare=True)
    engine = _engine(args, storage, progress)
    start = time.monotonic()
    if args.include:
        done = partial.restore(engine, _name(args), os.path.abspath(args.restore_abs_path), args.include,
                               args.restore_from_date, overwrite=args.overwrite)
        level, what = done.level, f"{done.paths} paths of {printable(_name(args))}"
    else:
        level = engine.restore(_name(args), os.path.abspath(args.restore_abs_path),
                               overwrite=args.overwrite,
                               recent_to_date=args.restore_from_date,
                               backup_media="fs")
        what = printable(_name(args))
    if progress is not None:
        progress.close()
    print(f"restored {what} up to level {level} into {printable(args.restore_abs_path)} "
          f"in {time.monotonic() - start:.2f} s")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, progress) -> int:
    storage = _storage(args, skip_prepare=True)
    engine = rsyncv2.Rsyncv2Engine(storage=storage)
    names = [_name(args)] if args.backup_name else \
        storage.backup_names(engine.name)
    if args.backup_name and not storage.list_chains(engine, names[0]):
        raise errors.BackupNotFoundError(f"no backup named {names[0]} in {args.container}")
    if args.json:
        backups = []
        for name in names:
            chains = [{"level_zero_timestamp": chain[min(chain)].level_zero_timestamp,
                       "levels": [level_json(chain[lvl], storage.level_size(chain[lvl])) for lvl in sorted(chain)]}
                      for chain in storage.list_chains(engine, name)]
            backups.append({"name": name, "chains": chains})
        print_json({"backups": backups})
        return EXIT_OK
    for name in names:
        print(printable(name))       # names a storage lists: attacker data
        for chain in storage.list_chains(engine, name):
            first = chain[min(chain)]
            print(f"  chain {iso_time(first.level_zero_timestamp)}")
            for level in sorted(chain):
                b = chain[level]
                size = human_size(storage.level_size(b))
                print("    level %d  %s  %s" % (level, iso_time(b.timestamp), size))
    return EXIT_OK


def cmd_ls(args: argparse.Namespace, progress) -> int:
    """The tree a restore at --restore-from-date gives, one entry a line (``inventory``)."""
    engine = _engine(args, _storage(args, skip_prepare=True), None)
    with inventory.tree_at(engine, _name(args), args.restore_from_date) as tree:
        entries = inventory.select(tree.entries(), args.paths)
        if args.json:
            print_json({"backup": _name(args), **level_json(tree.top),
                        "entries": [entry_json(me.entry) for me in entries]})
            return EXIT_OK
        for me in entries:
            print(long_line(me.entry) if args.long else show_path(me.entry.path))
    return EXIT_OK


def cmd_diff(args: argparse.Namespace, progress) -> int:
    """What changed from the tree at --from-date to the one at --to-date, restic's letters."""
    engine = _engine(args, _storage(args, skip_prepare=True), None)
    with inventory.tree_at(engine, _name(args), args.from_date) as old, \
            inventory.tree_at(engine, _name(args), args.to_date) as new:
        changes = inventory.diff(old.entries(), new.entries())
        if args.json:
            print_json({"backup": _name(args), "from": level_json(old.top), "to": level_json(new.top),
                        "changes": [change_json(c) for c in changes]})
            return EXIT_OK
        for change in changes:
            print(f"{change.letter}  {show_path(change.path)}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, progress) -> int:
    storage = _storage(args, skip_prepare=True)
    engine = _engine(args, storage, progress)
    start = time.monotonic()
    report = verify.verify(engine, _name(args), args.restore_from_date)
    if progress is not None:
        progress.close()
    if args.json:
        print_json({"backup": report.name, "levels": report.levels, "manifest_entries": report.manifest_entries,
                    "seconds": round(time.monotonic() - start, 3)})
        return EXIT_OK
    print("verified %s levels %d..%d: every record decoded, every file "
          "digest checked (%d manifest entries), %.2f s"
          % (report.name, report.levels[0], report.levels[-1],
             report.manifest_entries, time.monotonic() - start))
    return EXIT_OK


def cmd_cleanup(args: argparse.Namespace, progress) -> int:
    """Sweep one backup name (``Storage.sweep``), as a backup does first."""
    storage = _storage(args, skip_prepare=True)
    engine = rsyncv2.Rsyncv2Engine(storage=storage)
    conf = opts.load(args.config_file)[opts.GROUP]
    age = sweeping.resolve_age(args.sweep_age, conf.sweep_age)
    report = storage.sweep(engine, _name(args), age).sweep_scratch(age)
    print(f"cleanup of {printable(_name(args))}: {describe_sweep(report, age)}")
    return EXIT_WARNINGS if report.failed else EXIT_OK


def cmd_remove(args: argparse.Namespace, progress) -> int:
    """Remove the chains ``retention.plan`` picks (``--dry-run``: print them only)."""
    storage = _storage(args, skip_prepare=True)
    engine = rsyncv2.Rsyncv2Engine(storage=storage)
    if args.remove_from_date is not None:
        cutoff = args.remove_from_date
    else:
        cutoff = int(time.time() - args.remove_older_than * 86400)
    names = [_name(args)] if args.backup_name else storage.backup_names(engine.name)
    if args.backup_name and not storage.list_chains(engine, names[0]):
        raise errors.BackupNotFoundError(f"no backup named {names[0]} in {args.container}")
    removals = retention.plan(storage, engine, names, cutoff)
    for removal in removals:
        if not args.dry_run:
            retention.remove(storage, engine, removal)
        if not args.json:
            print(f"{'would remove' if args.dry_run else 'removed'} {printable(removal.name)} chain "
                  f"{iso_time(removal.chain)}: {removal.levels} levels, newest {iso_time(removal.newest)}, "
                  f"{human_size(removal.stored_bytes)}")
    if args.json:
        print_json({"dry_run": args.dry_run, "cutoff": cutoff, "removed": [
            {"name": r.name, "level_zero_timestamp": r.chain, "levels": r.levels, "newest_timestamp": r.newest,
             "size": r.stored_bytes} for r in removals]})
    elif not removals:
        print(f"nothing to remove: no chain but the newest of each backup ends before {iso_time(cutoff)}")
    return EXIT_OK


COMMANDS = {"backup": cmd_backup, "restore": cmd_restore, "list": cmd_list, "ls": cmd_ls, "diff": cmd_diff,
            "verify": cmd_verify, "cleanup": cmd_cleanup, "remove": cmd_remove}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = args.command in ("ls", "diff") or getattr(args, "json", False)
    _setup_logging(args.debug, stderr=quiet)
    progress = TtyProgress() if sys.stderr.isatty() and not quiet else None
    # SIGINT, SIGTERM and SIGHUP raise Interrupted from here on: the run
    # unwinds through its cleanup (temporary files, uploads, staged files).
    try:
        with interrupt.handling(take_over=True):
            return _run(args, progress)
    except (KeyboardInterrupt, interrupt.Interrupted) as err:
        return _interrupted(err, progress)


def console() -> None:
    """The ``freezer-rsyncv2`` command: ``main``, then the exit.

    Everything still alive is frozen out of the garbage collector first: the
    interpreter's exit would otherwise run its cyclic collections over all
    of it while it tears the modules down (30-40 ms after a backup), only to
    free memory that the system frees anyway.  Files are closed by then and
    exit handlers still run.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


def _run(args: argparse.Namespace, progress) -> int:
    try:
        return COMMANDS[args.command](args, progress)
    except errors.Rsyncv2Error as err:
        return _failed(err, err.exit_code, args.debug)
    except cfg.Error as err:        # a configuration file's bad value
        return _failed(err, EXIT_USAGE, args.debug)
    except BrokenPipeError:         # ``ls | head``: the reader has what it wanted
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 128 + signal.SIGPIPE
    except OSError as err:
        return _failed(err, EXIT_FAILURE, args.debug)


def _failed(err: Exception, code: int, debug: bool) -> int:
    """One line on stderr (the traceback too with --debug, unless a usage error); ``code``."""
    _reraise_if_interrupted(err)
    if debug and code != EXIT_USAGE:
        LOG.exception("failed")
    print(f"freezer-rsyncv2: error: {printable(err)}", file=sys.stderr)
    return code


def _reraise_if_interrupted(err: BaseException) -> None:
    """An error that a signal caused (a queue stopped under a reader) is
    reported as the interruption it is."""
    signum = interrupt.received()
    if signum is not None:
        raise interrupt.Interrupted.of(signum) from err


def _interrupted(err: BaseException, progress) -> int:
    """One line on stderr; the exit code a shell gives the signal (130 for SIGINT)."""
    signum = getattr(err, "signum", signal.SIGINT)
    try:
        if progress is not None:
            progress.close()
        print(f"freezer-rsyncv2: interrupted by {interrupt.signal_name(signum)}", file=sys.stderr)
    except OSError:
        pass        # SIGHUP: the terminal may be gone
    return 128 + signum


if __name__ == "__main__":      # pragma: no cover
    console()
