"""A real S3-API server (moto's standalone server) on 127.0.0.1 and a fault-injecting proxy.

If the server cannot start (``moto[server]`` from the test extras is missing,
or it does not come up), every test using ``s3_server`` fails with the
reason: the S3 tests are part of the suite and are never skipped.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import http.client
import http.server
import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from freezer_rsyncv2.storage.retry import RetryPolicy
from freezer_rsyncv2.storage.s3 import S3Storage

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"

#: Retries for tests: several attempts, almost no waiting.
FAST_RETRY = RetryPolicy(attempts=4, initial_delay=0.01, max_delay=0.05)


class ServerUnavailable(Exception):
    """The S3 server package is missing or the server did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


class S3Server:
    """moto's standalone S3 server as a subprocess listening on 127.0.0.1."""

    def __init__(self, port: int, proc: subprocess.Popen, log_path: str) -> None:
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.endpoint = f"http://127.0.0.1:{port}"
        self.access_key, self.secret_key, self.region = ACCESS_KEY, SECRET_KEY, REGION

    @classmethod
    def start(cls, timeout: float = 30.0) -> S3Server:
        """Start a fresh server; raises ServerUnavailable with the reason if it cannot."""
        try:
            import moto.server  # noqa: F401 - only checks that the package is installed
        except ImportError as exc:
            raise ServerUnavailable(f"moto[server] is not installed: {exc}") from exc
        last = ""
        for _attempt in range(3):      # a free port can be taken before moto binds it
            port = free_port()
            log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
            env = dict(os.environ, MOTO_PORT=str(port), AWS_ACCESS_KEY_ID=ACCESS_KEY,
                       AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            log.close()
            if wait_for_port(port, timeout, proc):
                return cls(port, proc, log.name)
            proc.kill()
            proc.wait()
            with open(log.name, errors="replace") as handle:
                last = handle.read()[-2000:]
            os.unlink(log.name)
        raise ServerUnavailable(f"moto server did not start: {last}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def storage(self, container: str, endpoint: str | None = None, **kwargs: Any) -> S3Storage:
        """An S3Storage on ``container`` (``bucket[/prefix]``) of this server."""
        kwargs.setdefault("retry", FAST_RETRY)
        kwargs.setdefault("connect_timeout", 2.0)
        kwargs.setdefault("read_timeout", 10.0)
        return S3Storage(container, endpoint_url=endpoint or self.endpoint,
                         access_key=self.access_key, secret_key=self.secret_key,
                         region=self.region, **kwargs)

    def client(self) -> Any:
        """A plain boto3 client for assertions on raw keys and uploads."""
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3 server for the whole test session; tests isolate themselves by bucket/prefix."""
    try:
        server = S3Server.start()
    except ServerUnavailable as exc:
        pytest.fail(f"no S3 server, so the S3 tests cannot run (install the test extras: "
                    f"pip install -e '.[test]'): {exc}")
    try:
        yield server
    finally:
        server.stop()


# -- fault injection ------------------------------------------------------------------------

def operation(method: str, path: str, query: dict[str, list[str]]) -> str:
    """The S3 operation name of a path-style request."""
    has_key = path.strip("/").count("/") >= 1
    if method == "PUT":
        if "partNumber" in query:
            return "UploadPart"
        return "PutObject" if has_key else "CreateBucket"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in query else "Post"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if "uploads" in query:
        return "ListMultipartUploads"
    if not has_key:
        return "ListObjectsV2"
    return "GetObject"


ERROR_CODES = {403: "AccessDenied", 500: "InternalError", 503: "SlowDown"}


@dataclasses.dataclass
class Fault:
    """Break the requests of ``op`` (any if None) whose path contains ``path``.

    ``action``: an HTTP status (answered with an S3 error document),
    ``"drop"`` (close before forwarding), ``"lose"`` (forward, then close
    without answering: the request took effect but its answer is lost) or
    ``"cut"`` (forward, then close halfway through the answer's body),
    ``"corrupt"`` (flip a bit of the request body in transit) or
    ``"down"`` (hang up on this and every later request: the server is gone
    until ``FaultProxy.down`` is reset).
    The first ``skip`` matching requests pass; then ``times`` are broken
    (None: all of them). ``code`` overrides the S3 error code of a status.
    """

    op: str | None
    action: int | str
    times: int | None = 1
    skip: int = 0
    path: str = ""
    code: str = ""
    hits: int = 0
    seen: int = 0

    def matches(self, op: str, path: str) -> bool:
        return (self.op is None or self.op == op) and self.path in path

    def fire(self) -> bool:
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.hits >= self.times):
            return False
        self.hits += 1
        return True


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server that breaks chosen requests."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.down = False
        self.log: list[tuple[str, str, str]] = []      # (operation, path, outcome)
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def do_any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, *faults: Fault) -> None:
        with self.lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()

    def outcomes(self, op: str | None = None) -> list[str]:
        with self.lock:
            return [outcome for o, _p, outcome in self.log if op is None or o == op]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _pick(self, op: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(op, path) and fault.fire():
                    return fault
        return None

    def _record(self, op: str, path: str, outcome: str) -> None:
        with self.lock:
            self.log.append((op, path, outcome))

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(req.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        op = operation(req.command, url.path, query)
        body = _read_body(req)
        fault = self._pick(op, url.path)
        action = fault.action if fault else None
        if action == "down":
            self.down = True
        if self.down:
            self._record(op, url.path, "down")
            _hang_up(req)
            return
        if action == "corrupt" and body:
            body = bytes([body[0] ^ 1]) + body[1:]
        md5 = req.headers.get("Content-MD5")
        if md5 and base64.b64encode(hashlib.md5(body).digest()).decode() != md5:
            # as S3 does (moto itself does not check Content-MD5)
            self._record(op, url.path, "BadDigest")
            _send_error(req, 400, "BadDigest")
            return
        if isinstance(action, int):
            self._record(op, url.path, str(action))
            _send_error(req, action, fault.code if fault else "")
            return
        if action == "drop":
            self._record(op, url.path, "drop")
            _hang_up(req)
            return
        headers = {k: v for k, v in req.headers.items()
                   if k.lower() not in ("expect", "transfer-encoding", "connection",
                                        "content-length")}
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            upstream.request(req.command, req.path, body=body or None, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
        finally:
            upstream.close()
        if action == "lose":
            self._record(op, url.path, "lose")
            _hang_up(req)
            return
        self._record(op, url.path, "cut" if action == "cut" else str(resp.status))
        req.send_response(resp.status)
        for name, value in resp.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length",
                                    "date", "server"):
                req.send_header(name, value)
        if req.command == "HEAD":       # the length of the body a GET would get
            req.send_header("Content-Length", resp.getheader("Content-Length", "0"))
            req.end_headers()
            return
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if action == "cut":
            req.wfile.write(data[:len(data) // 2])
            req.wfile.flush()
            _hang_up(req)
            return
        req.wfile.write(data)


def _read_body(req: http.server.BaseHTTPRequestHandler) -> bytes:
    if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(req.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while req.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(req.rfile.read(size))
            req.rfile.readline()
    length = int(req.headers.get("Content-Length") or 0)
    return req.rfile.read(length) if length else b""


def _send_error(req: http.server.BaseHTTPRequestHandler, status: int, code: str = "") -> None:
    code = code or ERROR_CODES.get(status, "InternalError")
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>injected {code}</Message><RequestId>fault</RequestId></Error>").encode()
    req.send_response(status)
    req.send_header("Content-Type", "application/xml")
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    if req.command != "HEAD":
        req.wfile.write(body)


def _hang_up(req: http.server.BaseHTTPRequestHandler) -> None:
    req.close_connection = True
    with contextlib.suppress(OSError):
        req.wfile.flush()
        req.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A FaultProxy in front of the session's S3 server (no faults until ``add``)."""
    proxy = FaultProxy(s3_server.port)
    try:
        yield proxy
    finally:
        proxy.stop()


def unique_bucket(prefix: str = "t") -> str:
    """A bucket name no other test in this session uses."""
    return f"{prefix}-{os.getpid()}-{next(_COUNTER)}-{time.monotonic_ns() % 10**6}"


_COUNTER = itertools.count(1)


def pending_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    """Unfinished multipart uploads of ``bucket``."""
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def object_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key of ``bucket`` under ``prefix``, sorted."""
    keys: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(keys)
