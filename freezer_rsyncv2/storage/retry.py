"""Retry policy with exponential backoff for transient object-store errors (5xx, throttling)."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from typing import TypeVar

from botocore import exceptions as boto_errors
from oslo_log import log


LOG = log.getLogger(__name__)

T = TypeVar("T")

#: Error codes that S3 and compatible stores (Ceph RGW, MinIO, Swift's s3api)
#: send for "try again": throttling, timeouts and internal failures.
TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "RequestThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete", "InternalError",
    "ServiceUnavailable", "OperationAborted",
    # The body did not match its Content-MD5: corrupted in transit, so resend.
    "BadDigest",
})

#: HTTP statuses that mean "try again" whatever the error code says.
TRANSIENT_STATUSES = frozenset({408, 429})

#: Errors raised while connecting or while a body is in flight: the network,
#: not the request, failed. SSL errors are connection errors to botocore, but a
#: certificate problem does not go away by retrying, so they are excluded below.
_NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    boto_errors.ConnectionError,          # refused, unreachable, connect timeout
    boto_errors.HTTPClientError,          # closed, read timeout, broken stream
    boto_errors.IncompleteReadError,      # body shorter than Content-Length
    boto_errors.ChecksumError,            # corrupted in transit
    ConnectionError,                      # builtin: reset, aborted, broken pipe
    TimeoutError,
)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError ('' for anything else)."""
    if isinstance(exc, boto_errors.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    """The HTTP status of a ClientError (0 for anything else)."""
    if isinstance(exc, boto_errors.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return int(status or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` is worth retrying: 5xx, throttling, timeouts, dropped connections."""
    if isinstance(exc, boto_errors.SSLError):
        return False
    if isinstance(exc, boto_errors.ClientError):
        status = http_status(exc)
        return (status >= 500 or status in TRANSIENT_STATUSES
                or error_code(exc) in TRANSIENT_CODES)
    return isinstance(exc, _NETWORK_ERRORS)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How many times and how patiently a transient failure is retried.

    ``attempts`` counts the first try. Before retry *n* (1-based) the caller
    sleeps ``min(max_delay, initial_delay * multiplier ** (n - 1))`` seconds,
    of which up to half is random (``jitter``) so that many clients hitting
    a throttled store do not retry in lock step. Permanent errors (4xx other
    than throttling, bad credentials, missing buckets) are never retried.
    """

    attempts: int = 6
    initial_delay: float = 0.5
    max_delay: float = 20.0
    multiplier: float = 2.0
    jitter: bool = True
    sleep: Callable[[float], None] = dataclasses.field(
        default=time.sleep, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) \
                or self.attempts < 1:
            raise ValueError(f"retry attempts must be an int >= 1, got {self.attempts!r}")
        for name in ("initial_delay", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"retry {name} must be a number >= 0, got {value!r}")
        if not isinstance(self.multiplier, (int, float)) or self.multiplier < 1:
            raise ValueError(f"retry multiplier must be >= 1, got {self.multiplier!r}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** (retry - 1))
        if self.jitter:
            return base / 2 + random.uniform(0, base / 2)
        return base

    def call(self, fn: Callable[[], T], what: str = "request",
             on_retry: Callable[[BaseException], None] | None = None) -> T:
        """Run ``fn()``; retry it on transient errors; re-raise the last error.

        ``on_retry(exc)`` runs before each retry (after the backoff sleep),
        e.g. to reopen a stream where it broke.
        """
        failures = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                failures += 1
                if not is_transient(exc) or failures >= self.attempts:
                    raise
                self.backoff(exc, failures, what)
                if on_retry is not None:
                    on_retry(exc)

    def backoff(self, exc: BaseException, failures: int, what: str) -> None:
        """Log a transient failure and sleep before the next attempt."""
        wait = self.delay(failures)
        LOG.warning("%s failed (%s); retry %d of %d in %.2f s", what, describe(exc),
                    failures, self.attempts - 1, wait)
        self.sleep(wait)


def describe(exc: BaseException) -> str:
    """A short one-line description of an error for messages and logs."""
    code = error_code(exc)
    if code:
        message = exc.response.get("Error", {}).get("Message", "")  # type: ignore[attr-defined]
        status = http_status(exc)
        text = f"{code} (HTTP {status})" if status else code
        if message and message != code:
            text = f"{text}: {message}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
