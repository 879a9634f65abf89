"""A real OpenStack Swift on 127.0.0.1 for the tests: proxy (tempauth, s3api), account,
container and object servers, memcached, one-replica rings over a scratch directory.

Debian's ``swift-proxy``, ``swift-account``, ``swift-container``,
``swift-object`` and ``memcached`` packages provide the programs
(``tools/test.sh`` installs them).  If one is missing or the cluster does
not come up, every test using ``swift_server`` fails with the reason: the
Swift tests are part of the suite and are never skipped.
"""

from __future__ import annotations

import contextlib
import getpass
import http.client
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from freezer_rsyncv2.storage.retry import RetryPolicy
from freezer_rsyncv2.storage.swift import SwiftStorage
from freezer_rsyncv2.storage.swift_client import SwiftSettings
from tests.s3server import free_port, wait_for_port

#: tempauth's account, user and key (``user_<account>_<user> = <key>``);
#: the S3 API takes ``test:tester`` as access key and the key as secret.
ACCOUNT, USER, KEY = "test", "tester", "testing"
PACKAGES = ("swift-proxy", "swift-account", "swift-container", "swift-object", "memcached")
PROGRAMS = {"swift-proxy-server": "swift-proxy", "swift-account-server": "swift-account",
            "swift-container-server": "swift-container", "swift-object-server": "swift-object",
            "swift-ring-builder": "swift-proxy", "memcached": "memcached"}
SERVERS = ("account", "container", "object")
#: The proxy's middleware: Swift's sample pipeline, cut to what the tests use.
PIPELINE = ("catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy "
            "slo dlo proxy-logging proxy-server")

#: Retries for tests: several attempts, almost no waiting.
FAST_RETRY = RetryPolicy(attempts=4, initial_delay=0.01, max_delay=0.05)


class SwiftUnavailable(Exception):
    """A package is missing or the cluster did not start."""


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise SwiftUnavailable(f"{name} is not installed (Debian package {PROGRAMS[name]}; "
                               f"apt-get install {' '.join(PACKAGES)}, as tools/test.sh does)")
    return found


def _write(path: Path, text: str) -> None:
    path.write_text(text.lstrip())


class SwiftServer:
    """A one-node Swift cluster in a scratch directory; ``stop`` ends it and removes the directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {name: free_port() for name in ("proxy", "memcached", *SERVERS)}
        self.endpoint = f"http://127.0.0.1:{self.ports['proxy']}"
        self.auth_url = f"{self.endpoint}/auth/v1.0"
        self.storage_url = f"{self.endpoint}/v1/AUTH_{ACCOUNT}"
        self.username = f"{ACCOUNT}:{USER}"
        self.key = KEY
        # For the S3 API (s3api with tempauth).
        self.access_key, self.secret_key, self.region = self.username, KEY, "us-east-1"

    # -- set-up ------------------------------------------------------------------------

    @classmethod
    def start(cls, timeout: float = 60.0) -> SwiftServer:
        """Configure and start a cluster; raises SwiftUnavailable with the reason if it cannot."""
        for name in PROGRAMS:
            _program(name)
        server = cls(Path(tempfile.mkdtemp(prefix="swift-test-")))
        try:
            server._configure()
            server._launch(timeout)
        except SwiftUnavailable as exc:
            logs = server.logs()
            server.stop()
            raise SwiftUnavailable(f"{exc}\n{logs}") from None
        except BaseException:
            server.stop()
            raise
        return server

    def _configure(self) -> None:
        etc, devices = self.root / "etc", self.root / "srv"
        etc.mkdir()
        (devices / "d1").mkdir(parents=True)
        (self.root / "run").mkdir()
        user = getpass.getuser()
        common = (f"[DEFAULT]\nbind_ip = 127.0.0.1\nswift_dir = {etc}\ndevices = {devices}\n"
                  f"mount_check = false\nfallocate_reserve = 0\nuser = {user}\nworkers = 1\nlog_level = INFO\n"
                  f"log_udp_host = 127.0.0.1\nlog_udp_port = {free_port()}\n")
        _write(etc / "swift.conf", """
[swift-hash]
swift_hash_path_suffix = rsyncv2-tests
swift_hash_path_prefix = rsyncv2-tests
[storage-policy:0]
name = only
default = yes
""")
        for kind in SERVERS:
            _write(etc / f"{kind}-server.conf", f"""
{common}bind_port = {self.ports[kind]}
[pipeline:main]
pipeline = {kind}-server
[app:{kind}-server]
use = egg:swift#{kind}
[{kind}-replicator]
[{kind}-updater]
[{kind}-auditor]
""")
            builder = str(etc / f"{kind}.builder")
            ring = _program("swift-ring-builder")
            for args in (["create", "6", "1", "0"],
                         ["add", f"r1z1-127.0.0.1:{self.ports[kind]}/d1", "100"],
                         ["rebalance"]):
                done = subprocess.run([ring, builder, *args], capture_output=True, text=True, timeout=60)
                if done.returncode not in (0, 1):       # 1: rebalance warnings
                    raise SwiftUnavailable(f"swift-ring-builder {' '.join(args)} failed: "
                                           f"{done.stdout}{done.stderr}")
        _write(etc / "proxy-server.conf", f"""
{common}bind_port = {self.ports['proxy']}
[pipeline:main]
pipeline = {PIPELINE}
[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{self.ports['memcached']}
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:s3api]
use = egg:swift#s3api
[filter:tempauth]
use = egg:swift#tempauth
user_{ACCOUNT}_{USER} = {KEY} .admin
user_{ACCOUNT}_reader = reading
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
""")

    def _launch(self, timeout: float) -> None:
        etc = self.root / "etc"
        self._spawn("memcached", [_program("memcached"), "-l", "127.0.0.1", "-p",
                                  str(self.ports["memcached"]), "-U", "0", "-m", "64",
                                  "-u", getpass.getuser()])
        for kind in SERVERS:
            self._spawn(kind, [_program(f"swift-{kind}-server"), str(etc / f"{kind}-server.conf"), "-v"])
        self._spawn("proxy", [_program("swift-proxy-server"), str(etc / "proxy-server.conf"), "-v"])
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            if not wait_for_port(self.ports[name], max(1.0, deadline - time.monotonic()), proc):
                raise SwiftUnavailable(f"the {name} server did not start listening "
                                       f"(exit code {proc.poll()})")
        # Ready when a login works and the account answers (account_autocreate).
        last = ""
        while time.monotonic() < deadline:
            try:
                token = self.token()
                status, _body = self.request("GET", f"/v1/AUTH_{ACCOUNT}", {"X-Auth-Token": token})
                if status in (200, 204):
                    return
                last = f"account GET answered {status}"
            except (OSError, http.client.HTTPException, SwiftUnavailable) as exc:
                last = str(exc)
            time.sleep(0.2)
        raise SwiftUnavailable(f"Swift did not become ready in {timeout:.0f} s: {last}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")
        with log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)

    # -- use ---------------------------------------------------------------------------

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, bytes]:
        """One plain HTTP request to the proxy: (status, body)."""
        status, _headers, data = self._http(method, path, headers, body)
        return status, data

    def token(self) -> str:
        """A fresh tempauth token of ``test:tester`` (valid for a day)."""
        status, headers, _body = self._http("GET", "/auth/v1.0", {"X-Auth-User": self.username,
                                                                  "X-Auth-Key": self.key})
        token = headers.get("x-auth-token")
        if status != 200 or not token:
            raise SwiftUnavailable(f"tempauth login answered {status}")
        return token

    def _http(self, method: str, path: str, headers: dict[str, str] | None = None,
              body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["proxy"], timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def settings(self, **changes: Any) -> SwiftSettings:
        """tempauth (identity v1) settings of ``test:tester``."""
        values: dict[str, Any] = {"auth_url": self.auth_url, "username": self.username,
                                  "password": self.key, "auth_version": "1"}
        values.update(changes)
        return SwiftSettings.from_options(environ={}, **values)

    def storage(self, container: str, **kwargs: Any) -> SwiftStorage:
        """A SwiftStorage on ``container`` (``name[/prefix]``) of this cluster."""
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("timeout", 30.0)
        settings = kwargs.pop("settings", None) or self.settings()
        return SwiftStorage(container, settings, **kwargs)

    def client(self) -> Any:
        """A plain swiftclient connection for assertions on raw objects."""
        from swiftclient.client import Connection
        return Connection(authurl=self.auth_url, user=self.username, key=self.key,
                          auth_version="1", retries=0)

    def object_names(self, container: str, prefix: str = "") -> list[str]:
        """Every object name of ``container`` under ``prefix``, sorted ([] if no container)."""
        from swiftclient.exceptions import ClientException
        try:
            _head, listing = self.client().get_container(container, prefix=prefix, full_listing=True)
        except ClientException as exc:
            if exc.http_status == 404:
                return []
            raise
        return sorted(obj["name"] for obj in listing)

    def env(self) -> dict[str, str]:
        """OS_* variables of a tempauth (v1) login."""
        return {"OS_AUTH_URL": self.auth_url, "OS_USERNAME": self.username, "OS_PASSWORD": self.key,
                "OS_AUTH_VERSION": "1"}

    def logs(self) -> str:
        """The servers' last log lines, for failure messages."""
        out = []
        for name in self.procs:
            path = self.root / f"{name}.log"
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").strip().splitlines()[-8:]
                out.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SwiftServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def swift_server() -> Iterator[SwiftServer]:
    """One Swift cluster for the whole test session; tests isolate themselves by container."""
    try:
        server = SwiftServer.start()
    except SwiftUnavailable as exc:
        pytest.fail(f"no Swift cluster, so the Swift tests cannot run (tools/test.sh installs "
                    f"the packages: apt-get install {' '.join(PACKAGES)}): {exc}")
    try:
        yield server
    finally:
        server.stop()


def unique_container(prefix: str = "t") -> str:
    """A container name no other test in this session uses."""
    return f"{prefix}-{os.getpid()}-{next(_COUNTER)}-{time.monotonic_ns() % 10**6}"


_COUNTER = itertools.count(1)
