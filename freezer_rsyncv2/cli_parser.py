"""The command line's parser: commands, options and their checks (``cli.py`` runs them)."""

from __future__ import annotations

import argparse
import datetime
import socket

import freezer_rsyncv2
from freezer_rsyncv2 import errors
from freezer_rsyncv2.storage import factory
from freezer_rsyncv2.storage import sweep as sweeping
from freezer_rsyncv2.stream import compression

EPILOG = """exit codes:
  0  success
  1  failure (the reason is printed on one line)
  2  usage error (bad or missing option)
  3  finished with warnings (entries skipped or changed while read)
  130, 143, 129  stopped by SIGINT, SIGTERM or SIGHUP (128 + the signal's
     number) after removing what the run had written; a second signal
     ends it at once
  141  the reader of the output went away (SIGPIPE: ls | head)
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


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if not days >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0, got {text!r}")
    return days


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
    _add_json(b)

    r = command("restore", "restore a backup into a directory")
    r.add_argument("--backup-name", required=True)
    r.add_argument("--restore-abs-path", required=True)
    r.add_argument("--restore-from-date", type=_date,
                   metavar="YYYY-MM-DDThh:mm:ss",
                   help="newest level not after this time (UTC unless a "
                        "zone such as +02:00 is given, as freezer-agent)")
    r.add_argument("--overwrite", action="store_true")
    r.add_argument("--encrypt-pass-file")
    r.add_argument("--include", action="append", metavar="PATTERN",
                   help="restore only this path, or the paths this glob matches (relative to the backed-up "
                        "root; a directory brings what is below it); repeatable.  Reads only what they need")

    v = command("verify", "read a whole chain, check every record and "
                "file digest")
    v.add_argument("--backup-name", required=True)
    v.add_argument("--restore-from-date", type=_date,
                   metavar="YYYY-MM-DDThh:mm:ss",
                   help="verify the chain as restored at this time (UTC)")
    v.add_argument("--encrypt-pass-file")
    _add_json(v)

    rm = command("remove", "remove whole chains whose newest level is older than a cut-off "
                           "(never a backup's newest chain)")
    rm.add_argument("--backup-name", help="only this backup (default: every backup in the container)")
    when = rm.add_mutually_exclusive_group(required=True)
    when.add_argument("--remove-older-than", type=_days, metavar="DAYS",
                      help="chains whose newest level is older than this many days")
    when.add_argument("--remove-from-date", type=_date, metavar="YYYY-MM-DDThh:mm:ss",
                      help="chains whose newest level is older than this time (UTC unless a zone is given)")
    rm.add_argument("--dry-run", action="store_true", help="print what would go, remove nothing")
    _add_json(rm)

    ls = command("list", "list chains, levels and sizes")
    ls.add_argument("--backup-name")
    _add_json(ls)

    tree = command("ls", "list the entries of a backup as restored at a date (reads manifests only)")
    tree.add_argument("--backup-name", required=True)
    tree.add_argument("--restore-from-date", type=_date, metavar="YYYY-MM-DDThh:mm:ss",
                      help="the tree a restore at this time gives (UTC unless a zone is given)")
    tree.add_argument("--long", "-l", action="store_true",
                      help="type and mode, owner/group, size, mtime (UTC)")
    tree.add_argument("--encrypt-pass-file")
    tree.add_argument("paths", nargs="*", metavar="PATH",
                      help="only these paths (relative to the backed-up root) and what is below them")
    _add_json(tree)

    d = command("diff", "what changed between the trees of two dates (reads manifests only)")
    d.add_argument("--backup-name", required=True)
    d.add_argument("--from-date", type=_date, required=True, metavar="YYYY-MM-DDThh:mm:ss",
                   help="the older tree: the one a restore at this time gives")
    d.add_argument("--to-date", type=_date, metavar="YYYY-MM-DDThh:mm:ss",
                   help="the newer tree (default: the newest level)")
    d.add_argument("--encrypt-pass-file")
    _add_json(d)

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


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (docs/options.rst); logs go to stderr")


def _add_sweep_age(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep-age", type=_sweep_age, metavar="SECONDS",
                   help="remove leftovers of interrupted runs of the backup "
                        "older than this (default: $%s, else the config "
                        "file's sweep_age, else %d: a day)"
                        % (sweeping.AGE_VARIABLE, sweeping.DEFAULT_AGE))
