"""freezer-rsyncv2 command line: backup, restore, verify, list, cleanup; thin over the engine.

Exit codes: 0 success, 1 failure, 2 usage error, 3 finished with warnings
(entries skipped or changed while read), 128 + the signal's number when
stopped by SIGINT (130), SIGTERM (143) or SIGHUP (129) after removing what
the run had written (``interrupt``).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

from oslo_config import cfg
from oslo_log import log

import freezer_rsyncv2
from freezer_rsyncv2 import errors
from freezer_rsyncv2 import interrupt
from freezer_rsyncv2 import opts
from freezer_rsyncv2 import verify
from freezer_rsyncv2.cli_output import (
    OneLineLogFilter, PrintableFormatter, TtyProgress, describe_sweep, human_size,
    printable)
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.storage import factory
from freezer_rsyncv2.storage import sweep as sweeping
from freezer_rsyncv2.stream import compression

LOG = log.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_WARNINGS = (
    errors.EXIT_OK, errors.EXIT_FAILURE, errors.EXIT_USAGE, errors.EXIT_WARNINGS)

EPILOG = """exit codes:
  0  success
  1  failure (the reason is printed on one line)
  2  usage error (bad or missing option)
  3  finished with warnings (entries skipped or changed while read)
  130, 143, 129  stopped by SIGINT, SIGTERM or SIGHUP (128 + the signal's
     number) after removing what the run had written; a second signal
     ends it at once
"""


def _date(text: str) -> int:
    """A date as freezer-agent reads it: UTC unless it names its zone."""
    try:
        when = datetime.datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return int(when.timestamp())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected YYYY-MM-DDThh:mm:ss, got {text!r}") from None


def _sweep_age(text: str) -> float:
    try:
        return sweeping.parse_age(text, "--sweep-age")
    except errors.ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freezer-rsyncv2", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"rsync-algorithm incremental backups (freezer_rsyncv2 {freezer_rsyncv2.__version__})")
    parser.add_argument("--version", action="version",
                        version=freezer_rsyncv2.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        common(p)
        return p

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--container", required=True,
                       help="local: directory holding the backups; "
                            "s3: BUCKET[/PREFIX]; swift: NAME[/PREFIX]")
        p.add_argument("--storage", choices=factory.KINDS, default="local",
                       help="where the backups live (default: local)")
        p.add_argument("--endpoint", metavar="URL",
                       help="s3: endpoint URL (default: $AWS_ENDPOINT_URL, "
                            "else AWS)")
        p.add_argument("--access-key", metavar="KEY",
                       help="s3: access key (default: $AWS_ACCESS_KEY_ID)")
        p.add_argument("--secret-key", metavar="KEY",
                       help="s3: secret key (default: "
                            "$AWS_SECRET_ACCESS_KEY)")
        _add_os_options(p)
        p.add_argument("--hostname", default=socket.gethostname(),
                       help="host part of the backup name (default: this "
                            "host, as freezer-agent does)")
        p.add_argument("--config-file", action="append", default=[],
                       help="oslo.config file with an [rsyncv2] section")
        p.add_argument("--debug", action="store_true",
                       help="log debug messages")

    b = command("backup", "back up a directory or a file")
    b.add_argument("--path-to-backup", required=True)
    b.add_argument("--backup-name", required=True)
    b.add_argument("--compression", choices=compression.NAMES)
    b.add_argument("--encrypt-pass-file")
    b.add_argument("--max-level", type=int)
    b.add_argument("--always-level", type=int)
    b.add_argument("--restart-always-level", type=float, metavar="DAYS")
    b.add_argument("--no-incremental", action="store_true",
                   help="force a new level 0")
    b.add_argument("--exclude", action="append",
                   help="glob pattern to leave out (repeatable)")
    b.add_argument("--dereference-symlink", action="store_true")
    b.add_argument("--rsync-block-size", type=int)
    b.add_argument("--max-segment-size", type=int)
    b.add_argument("--dry-run", action="store_true",
                   help="read and delta everything, store nothing")
    _add_sweep_age(b)

    r = command("restore", "restore a backup into a directory")
    r.add_argument("--backup-name", required=True)
    r.add_argument("--restore-abs-path", required=True)
    r.add_argument("--restore-from-date", type=_date,
                   metavar="YYYY-MM-DDThh:mm:ss",
                   help="newest level not after this time (UTC unless a "
                        "zone such as +02:00 is given, as freezer-agent)")
    r.add_argument("--overwrite", action="store_true")
    r.add_argument("--encrypt-pass-file")

    v = command("verify", "read a whole chain, check every record and "
                "file digest")
    v.add_argument("--backup-name", required=True)
    v.add_argument("--restore-from-date", type=_date,
                   metavar="YYYY-MM-DDThh:mm:ss",
                   help="verify the chain as restored at this time (UTC)")
    v.add_argument("--encrypt-pass-file")

    ls = command("list", "list chains, levels and sizes")
    ls.add_argument("--backup-name")

    c = command("cleanup", "remove what interrupted runs of a backup left: "
                "temporary objects, incomplete uploads, unfinished levels")
    c.add_argument("--backup-name", required=True)
    _add_sweep_age(c)
    return parser


#: Swift's identity options: (option, OS_* variable, help).
OS_OPTIONS = (
    ("auth-url", "OS_AUTH_URL", "identity endpoint (v1: the tempauth URL)"),
    ("username", "OS_USERNAME", "user name"),
    ("password", "OS_PASSWORD", "password (v1: the key)"),
    ("project-name", "OS_PROJECT_NAME", "project (tenant) name"),
    ("user-domain-name", "OS_USER_DOMAIN_NAME", "user's domain (default: Default)"),
    ("project-domain-name", "OS_PROJECT_DOMAIN_NAME",
     "project's domain (default: Default)"),
    ("region-name", "OS_REGION_NAME", "region of the object-store endpoint"),
    ("auth-version", "OS_AUTH_VERSION",
     "identity API version: 3 (Keystone, default), 2, or 1 (tempauth)"),
)


def _add_os_options(p: argparse.ArgumentParser) -> None:
    for name, variable, text in OS_OPTIONS:
        p.add_argument("--os-" + name, metavar="VALUE",
                       help=f"swift: {text} (default: ${variable})")


def _add_sweep_age(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep-age", type=_sweep_age, metavar="SECONDS",
                   help="remove leftovers of interrupted runs of the backup "
                        "older than this (default: $%s, else the config "
                        "file's sweep_age, else %d: a day)"
                        % (sweeping.AGE_VARIABLE, sweeping.DEFAULT_AGE))


def _setup_logging(debug: bool) -> None:
    conf = cfg.ConfigOpts()
    log.register_options(conf)
    conf(args=[], project="freezer-rsyncv2")
    conf.set_override("debug", debug)
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
            print(f"  PARTIAL: {len(s.warnings)} warnings (see the log); exit code 3")
            return EXIT_WARNINGS
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, progress) -> int:
    storage = _storage(args, skip_prepare=True)
    engine = _engine(args, storage, progress)
    start = time.monotonic()
    level = engine.restore(_name(args), os.path.abspath(args.restore_abs_path),
                           overwrite=args.overwrite,
                           recent_to_date=args.restore_from_date,
                           backup_media="fs")
    if progress is not None:
        progress.close()
    print("restored %s up to level %d into %s in %.2f s"
          % (printable(_name(args)), level,
             printable(args.restore_abs_path), time.monotonic() - start))
    return EXIT_OK


def cmd_list(args: argparse.Namespace, progress) -> int:
    storage = _storage(args, skip_prepare=True)
    engine = rsyncv2.Rsyncv2Engine(storage=storage)
    names = [_name(args)] if args.backup_name else \
        storage.backup_names(engine.name)
    if args.backup_name and not storage.list_chains(engine, names[0]):
        raise errors.BackupNotFoundError(f"no backup named {names[0]} in {args.container}")
    for name in names:
        print(printable(name))       # names a storage lists: attacker data
        for chain in storage.list_chains(engine, name):
            first = chain[min(chain)]
            print(f"  chain {_iso(first.level_zero_timestamp)}")
            for level in sorted(chain):
                b = chain[level]
                size = human_size(storage.level_size(b))
                print("    level %d  %s  %s" % (level, _iso(b.timestamp), size))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, progress) -> int:
    storage = _storage(args, skip_prepare=True)
    engine = _engine(args, storage, progress)
    start = time.monotonic()
    report = verify.verify(engine, _name(args), args.restore_from_date)
    if progress is not None:
        progress.close()
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
    report = storage.sweep(engine, _name(args), age)
    print(f"cleanup of {printable(_name(args))}: {describe_sweep(report, age)}")
    return EXIT_WARNINGS if report.failed else EXIT_OK


def _iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(
        int(ts), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


COMMANDS = {"backup": cmd_backup, "restore": cmd_restore, "list": cmd_list,
            "verify": cmd_verify, "cleanup": cmd_cleanup}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.debug)
    progress = TtyProgress() if sys.stderr.isatty() else None
    # SIGINT, SIGTERM and SIGHUP raise Interrupted from here on: the run
    # unwinds through its cleanup (temporary files, uploads, staged files).
    try:
        with interrupt.handling(take_over=True):
            return _run(args, progress)
    except (KeyboardInterrupt, interrupt.Interrupted) as err:
        return _interrupted(err, progress)


def _run(args: argparse.Namespace, progress) -> int:
    try:
        return COMMANDS[args.command](args, progress)
    except errors.Rsyncv2Error as err:
        return _failed(err, err.exit_code, args.debug)
    except cfg.Error as err:        # a configuration file's bad value
        return _failed(err, EXIT_USAGE, args.debug)
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
    sys.exit(main())
