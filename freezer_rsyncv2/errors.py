"""The library's exception hierarchy: every error it raises derives from Rsyncv2Error.

Each class carries the exit code a command line gives it (``exit_code``):
a front end maps nothing by hand.  Arguments a program passes wrongly to
the library (a negative size, an unknown name in code) are ``ValueError``
or ``TypeError``, not ours: they are bugs, not a user's mistake.
"""

#: Exit codes of the command line, one meaning each.
EXIT_OK = 0
EXIT_FAILURE = 1        # the run failed; the reason is printed on one line
EXIT_USAGE = 2          # a bad or missing option
EXIT_WARNINGS = 3       # finished, but entries were skipped or changed while read


class Rsyncv2Error(Exception):
    """Base class of every error this library raises on purpose."""

    exit_code = EXIT_FAILURE


class ConfigError(Rsyncv2Error):
    """An option or argument a user gave has a bad value (exit code 2)."""

    exit_code = EXIT_USAGE


class SourceError(Rsyncv2Error):
    """The backup source cannot be read as a whole (missing, not a directory...)."""


class FormatError(Rsyncv2Error):
    """A stored stream or manifest is not in a form we can decode."""


class BadMagicError(FormatError):
    """The bytes do not start with our magic number."""


class UnsupportedVersionError(FormatError):
    """The format version is newer (or older) than this library can read."""


class CorruptRecordError(FormatError):
    """A record is malformed: wrong type, missing field, length out of bounds."""


class TruncatedError(FormatError):
    """The stream ended before its trailer."""


class IntegrityError(Rsyncv2Error):
    """Data decoded but does not match what was promised (digest mismatch)."""


class AuthenticationError(IntegrityError):
    """Authenticated decryption failed: wrong key or tampered data."""


class UnsafePathError(Rsyncv2Error):
    """A path in a backup would escape the restore directory or is malformed."""


class RestoreError(Rsyncv2Error):
    """The restore cannot proceed (target not empty, basis missing, ...)."""


class StorageError(Rsyncv2Error):
    """The storage failed or does not hold what was asked for."""


class BackupNotFoundError(StorageError, IndexError):
    """No backup with the given name (and date) exists in the container.

    Also an IndexError, which is what Freezer's callers catch for "none".
    """


class StorageAccessError(StorageError):
    """The storage refuses the configured access: credentials, permissions, endpoint or TLS.

    A failure (exit code 1), not a usage error: the command line was right,
    the storage said no."""


class BucketNotFoundError(BackupNotFoundError):
    """The bucket (the container) does not exist, so it holds no backup either."""


class StorageUnavailableError(StorageError):
    """Transient storage errors (5xx, throttling, timeouts) persisted past every retry."""
