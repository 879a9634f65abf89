"""The library's exception hierarchy: every error it raises derives from Rsyncv2Error."""


class Rsyncv2Error(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(Rsyncv2Error):
    """An option or argument has a bad value (user error)."""


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


class StorageAccessError(StorageError, ConfigError):
    """The storage refuses the configured access: credentials, permissions, endpoint or TLS."""


class BucketNotFoundError(BackupNotFoundError):
    """The bucket (the container) does not exist, so it holds no backup either."""


class StorageUnavailableError(StorageError):
    """Transient storage errors (5xx, throttling, timeouts) persisted past every retry."""
