"""How SwiftStorage reaches Swift: the OS_* settings, swiftclient connections and error mapping.

Identity v1 (tempauth, swauth) goes through swiftclient's own login; v2 and
v3 (Keystone) through a keystoneauth1 session that swiftclient asks for the
token and the object-store endpoint of the service catalog.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import Mapping
from typing import Any

from swiftclient.client import Connection

from freezer_rsyncv2.errors import (BucketNotFoundError, ConfigError, StorageAccessError, StorageError,
                                    StorageUnavailableError)
from freezer_rsyncv2.storage import retry as retries
from freezer_rsyncv2.storage.base import StorageFileNotFoundError

#: Identity API versions we accept, as ``--os-auth-version`` spells them.
AUTH_VERSIONS = ("1", "2", "3")
DEFAULT_AUTH_VERSION = "3"

# swiftclient logs every non-2xx answer (a HEAD of a missing object is one)
# at INFO with a curl command line; keep it quiet unless someone asked.
_SWIFTCLIENT_LOG = logging.getLogger("swiftclient")
if _SWIFTCLIENT_LOG.level == logging.NOTSET:
    _SWIFTCLIENT_LOG.setLevel(logging.WARNING)


class SwiftAuthError(StorageAccessError):
    """Swift or its identity service refused the credentials (HTTP 401/403): exit code 1."""


@dataclasses.dataclass(frozen=True)
class SwiftSettings:
    """Where and as whom to log in; ``from_options`` fills the gaps from ``OS_*`` variables."""

    auth_url: str
    username: str
    password: str = dataclasses.field(repr=False)
    project_name: str | None = None
    user_domain_name: str | None = None
    project_domain_name: str | None = None
    region_name: str | None = None
    auth_version: str = DEFAULT_AUTH_VERSION
    interface: str = "public"
    #: A storage URL that overrides the catalog's (``OS_STORAGE_URL``).
    storage_url: str | None = None

    @classmethod
    def from_options(cls, auth_url: str | None = None, username: str | None = None,
                     password: str | None = None, project_name: str | None = None,
                     user_domain_name: str | None = None, project_domain_name: str | None = None,
                     region_name: str | None = None, auth_version: str | int | None = None,
                     environ: Mapping[str, str] | None = None) -> SwiftSettings:
        """Explicit values win; the rest comes from the variables the OpenStack clients read."""
        env: Mapping[str, str] = os.environ if environ is None else environ

        def pick(value: Any, *names: str) -> str | None:
            if value not in (None, ""):
                return str(value)
            for name in names:
                if env.get(name):
                    return env[name]
            return None

        version = pick(auth_version, "OS_AUTH_VERSION", "ST_AUTH_VERSION", "OS_IDENTITY_API_VERSION")
        version = (version or DEFAULT_AUTH_VERSION).strip().lower().lstrip("v")
        version = {"1.0": "1", "2.0": "2", "3.0": "3"}.get(version, version)
        if version not in AUTH_VERSIONS:
            raise ConfigError(f"--os-auth-version must be one of {', '.join(AUTH_VERSIONS)}, got {version!r}")
        v1 = version == "1"
        settings = {
            "auth_url": pick(auth_url, "OS_AUTH_URL", *(("ST_AUTH",) if v1 else ())),
            "username": pick(username, "OS_USERNAME", *(("ST_USER",) if v1 else ())),
            "password": pick(password, "OS_PASSWORD", *(("ST_KEY",) if v1 else ())),
        }
        missing = [f"--os-{name.replace('_', '-')}" for name, value in settings.items() if not value]
        if missing:
            raise ConfigError(f"--storage swift needs {', '.join(missing)} (or the OS_* variables)")
        project = pick(project_name, "OS_PROJECT_NAME", "OS_TENANT_NAME")
        if not v1 and not project:
            raise ConfigError(f"--storage swift with identity v{version} needs --os-project-name "
                              f"(or OS_PROJECT_NAME)")
        return cls(
            auth_url=str(settings["auth_url"]), username=str(settings["username"]),
            password=str(settings["password"]), project_name=project,
            user_domain_name=pick(user_domain_name, "OS_USER_DOMAIN_NAME") or ("Default" if not v1 else None),
            project_domain_name=pick(project_domain_name, "OS_PROJECT_DOMAIN_NAME")
            or ("Default" if not v1 else None),
            region_name=pick(region_name, "OS_REGION_NAME"), auth_version=version,
            interface=pick(None, "OS_INTERFACE", "OS_ENDPOINT_TYPE") or "public",
            storage_url=pick(None, "OS_STORAGE_URL"))


class Connections:
    """One swiftclient ``Connection`` per thread (a Connection holds one HTTP connection).

    The first login's storage URL and token are handed to the connections
    made later, so that threads do not log in again; each one can still
    log in again by itself when Swift answers 401 (an expired token).
    """

    def __init__(self, settings: SwiftSettings, policy: retries.RetryPolicy, timeout: float) -> None:
        self.settings = settings
        self.policy = policy
        self.timeout = timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._session: Any = None
        self._preauth: tuple[str, str] | None = None

    def get(self) -> Any:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._make()
            self._local.conn = conn
        return conn

    def login(self) -> tuple[str, str]:
        """Log in now (storage URL, token); the errors of a refused login are ours."""
        conn = self.get()
        try:
            url, token = conn.get_auth()
        except Exception as exc:
            raise translate(exc, "login", self.settings.auth_url, self.settings) from exc
        if self.settings.storage_url:
            url = self.settings.storage_url
        conn.url, conn.token = url, token
        with self._lock:
            self._preauth = (url, token)
        return url, token

    def _make(self) -> Any:
        s = self.settings
        options: dict[str, Any] = {"endpoint_type": s.interface}
        if s.region_name:
            options["region_name"] = s.region_name
        if s.storage_url:
            options["object_storage_url"] = s.storage_url
        with self._lock:
            preauth = self._preauth
            session = self._session_locked() if s.auth_version != "1" else None
        common: dict[str, Any] = {
            "retries": self.policy.attempts - 1, "starting_backoff": self.policy.initial_delay,
            "max_backoff": self.policy.max_delay, "timeout": self.timeout, "os_options": options,
        }
        if preauth is not None:
            common["preauthurl"], common["preauthtoken"] = preauth
        if session is not None:
            return Connection(session=session, **common)
        return Connection(authurl=s.auth_url, user=s.username, key=s.password, auth_version="1", **common)

    def _session_locked(self) -> Any:
        """The keystoneauth1 session of identity v2/v3 logins, shared by every thread."""
        if self._session is None:
            try:
                from keystoneauth1 import session as ks_session
                from keystoneauth1.identity import v2, v3
            except ImportError as exc:
                raise ConfigError(f"--storage swift with identity v{self.settings.auth_version} needs "
                                  f"keystoneauth1 (pip install keystoneauth1): {exc}") from exc
            s = self.settings
            if s.auth_version == "2":
                plugin: Any = v2.Password(auth_url=s.auth_url, username=s.username, password=s.password,
                                          tenant_name=s.project_name)
            else:
                plugin = v3.Password(auth_url=s.auth_url, username=s.username, password=s.password,
                                     project_name=s.project_name, user_domain_name=s.user_domain_name,
                                     project_domain_name=s.project_domain_name)
            self._session = ks_session.Session(auth=plugin, timeout=self.timeout)
        return self._session


def status_of(exc: BaseException) -> int:
    """The HTTP status of a swiftclient or keystoneauth1 error (0 when there is none)."""
    for attr in ("http_status", "status_code", "http_status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    return 0


def is_transient(exc: BaseException) -> bool:
    """5xx, throttling, timeouts and broken connections: worth another try."""
    status = status_of(exc)
    if status:
        return status >= 500 or status in (408, 429, 498)
    if retries.is_transient(exc):
        return True
    try:
        from requests import exceptions as req_errors
        if isinstance(exc, req_errors.SSLError):
            return False
        if isinstance(exc, (req_errors.ConnectionError, req_errors.Timeout,
                            req_errors.ChunkedEncodingError)):
            return True
    except ImportError:     # pragma: no cover - swiftclient depends on requests
        pass
    try:
        from urllib3 import exceptions as url_errors
        if isinstance(exc, (url_errors.ProtocolError, url_errors.ReadTimeoutError)):
            return True
    except ImportError:     # pragma: no cover
        pass
    return isinstance(exc, (socket.timeout, ConnectionError))


def describe(exc: BaseException) -> str:
    """One line: a swiftclient error's status and reason, else the error's text."""
    status = status_of(exc)
    reason = getattr(exc, "http_reason", "") or ""
    text = f"HTTP {status} {reason}".strip() if status and getattr(exc, "http_status", None) else ""
    text = text or str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def translate(exc: BaseException, operation: str, target: str, settings: SwiftSettings,
              container: str | None = None) -> BaseException:
    """Our error for a failed Swift or login request; other errors unchanged.

    ``target`` names the object (``container/name``) or container; every
    message is one line and names where the request went.
    """
    where = f"auth {settings.auth_url}, user {settings.username}"
    status = status_of(exc)
    text = describe(exc)
    kind = type(exc).__module__.split(".", 1)[0]
    if kind not in ("swiftclient", "keystoneauth1", "requests", "urllib3") and not is_transient(exc):
        return exc
    if status in (401, 403) or type(exc).__name__ in ("Unauthorized", "AuthorizationFailure"):
        return SwiftAuthError(f"Swift {operation} {target} refused: {text} (check the credentials "
                              f"and the project; {where})")
    if kind == "keystoneauth1" and type(exc).__name__ == "EndpointNotFound":
        return StorageError(f"the service catalog names no object-store endpoint for region "
                            f"{settings.region_name or '(any)'} ({where})")
    if status == 404:
        if container is not None and target == container:
            return BucketNotFoundError(f"Swift container {container!r} does not exist ({where})")
        return StorageFileNotFoundError(target, f"no such object in storage: {target} ({where})")
    if is_transient(exc):
        return StorageUnavailableError(f"Swift {operation} {target} still failing after "
                                       f"{_tries(exc)}: {text} ({where})")
    return StorageError(f"Swift {operation} {target} failed: {text} ({where})")


def _tries(exc: BaseException) -> str:
    """How many tries a swiftclient error took, when it says."""
    attempts = getattr(exc, "http_response_attempts", None) or getattr(exc, "attempts", None)
    return f"{attempts} attempts" if isinstance(attempts, int) else "every retry"
