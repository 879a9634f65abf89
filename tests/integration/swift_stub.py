"""A minimal Swift (object-store) API stand-in on 127.0.0.1, in memory, for freezer's swift storage.

Only what freezer 19.0.0's ``SwiftStorage`` sends through python-swiftclient:
the account listing, container PUT and JSON listings (``prefix``,
``delimiter``, ``marker``, ``limit``), object PUT/GET/DELETE, and dynamic
large objects: a GET of an object stored with ``X-Object-Manifest:
<container>/<prefix>`` returns the objects under that prefix, concatenated
in name order.  Every request must carry the Keystone stand-in's token.
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import http.server
import json
import threading
import time
import urllib.parse
from typing import Any

from tests.integration.httpstub import StubServer, reply

ACCOUNT = "AUTH_p1"


@dataclasses.dataclass
class StoredObject:
    data: bytes
    content_type: str
    manifest: str | None        # X-Object-Manifest: "<container>/<prefix>"
    modified: float

    def listing(self, name: str) -> dict:
        return {"name": name, "bytes": len(self.data),
                "hash": hashlib.md5(self.data).hexdigest(),
                "content_type": self.content_type,
                "last_modified": time.strftime(
                    "%Y-%m-%dT%H:%M:%S.000000", time.gmtime(self.modified))}


class SwiftStub(StubServer):
    """Containers of objects in memory, behind one account; records (method, path, query)."""

    name = "swift-stub"

    def __init__(self, token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.token = token
        self.requests: list[tuple[str, str, str]] = []
        self.containers: dict[str, dict[str, StoredObject]] = {}
        self.lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def _route(self) -> tuple[str | None, str | None, dict[str, str]] | None:
                """(container, object, query) of an authorised request to our account, else None (replied)."""
                url = urllib.parse.urlsplit(self.path)
                stub.requests.append((self.command, url.path, url.query))
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length) if length else b""
                if self.headers.get("X-Auth-Token") != stub.token:
                    self._send(401, b"Unauthorized")
                    return None
                parts = url.path.split("/", 4)      # "", "v1", account, container, object
                if len(parts) < 3 or parts[1] != "v1" or parts[2] != ACCOUNT:
                    self._send(404, b"Not Found")
                    return None
                names = [urllib.parse.unquote(p) or None for p in parts[3:]] + [None, None]
                query = dict(urllib.parse.parse_qsl(url.query))
                return names[0], names[1], query

            def do_GET(self) -> None:
                route = self._route()
                if route is not None:
                    self._send(*stub.get(*route))

            def do_PUT(self) -> None:
                route = self._route()
                if route is not None:
                    self._send(*stub.put(route[0], route[1], self.body, self.headers))

            def do_DELETE(self) -> None:
                route = self._route()
                if route is not None:
                    self._send(*stub.delete(route[0], route[1]))

            def _send(self, code: int, data: bytes,
                      headers: dict[str, str] | None = None) -> None:
                reply(self, code, data, {
                    "Content-Type": "text/plain; charset=utf-8",
                    "X-Trans-Id": "tx%x" % time.monotonic_ns(),
                    "Date": email.utils.formatdate(usegmt=True), **(headers or {})})

        super().__init__(Handler, host, port)

    @property
    def url(self) -> str:
        """The object-store endpoint for the Keystone catalog."""
        return "%s/v1/%s" % (self.root, ACCOUNT)

    # -- the API ------------------------------------------------------------

    def get(self, container: str | None, name: str | None, query: dict[str, str]
            ) -> tuple[int, bytes, dict[str, str]]:
        with self.lock:
            if container is None:
                return self._json([{"name": c, "count": len(objs),
                                    "bytes": sum(len(o.data) for o in objs.values())}
                                   for c, objs in sorted(self.containers.items())])
            if container not in self.containers:
                return 404, b"Not Found", {}
            if name is None:
                return self._json(self._list(container, query))
            if name not in self.containers[container]:
                return 404, b"Not Found", {}
            obj = self.containers[container][name]
            data = self._read(container, name)
        etag = hashlib.md5(data).hexdigest()
        headers = {"Content-Type": obj.content_type, "Etag": '"%s"' % etag if obj.manifest else etag,
                   "Last-Modified": email.utils.formatdate(obj.modified, usegmt=True)}
        if obj.manifest:
            headers["X-Object-Manifest"] = obj.manifest
        return 200, data, headers

    def put(self, container: str | None, name: str | None, body: bytes,
            headers: Any) -> tuple[int, bytes, dict[str, str]]:
        if container is None:
            return 405, b"Method Not Allowed", {}
        with self.lock:
            if name is None:
                created = container not in self.containers
                self.containers.setdefault(container, {})
                return (201 if created else 202), b"", {}
            if container not in self.containers:
                return 404, b"Not Found", {}
            manifest = headers.get("X-Object-Manifest")
            self.containers[container][name] = StoredObject(
                data=body, modified=time.time(), manifest=urllib.parse.unquote(manifest) if manifest else None,
                content_type=headers.get("Content-Type") or "application/octet-stream")
        return 201, b"", {"Etag": hashlib.md5(body).hexdigest()}

    def delete(self, container: str | None, name: str | None
               ) -> tuple[int, bytes, dict[str, str]]:
        if name is None:        # containers, the account: freezer deletes neither
            return 405, b"Method Not Allowed", {}
        with self.lock:
            objects = self.containers.get(container or "", {})
            if objects.pop(name, None) is None:
                return 404, b"Not Found", {}
        return 204, b"", {}

    @staticmethod
    def _json(body: Any) -> tuple[int, bytes, dict[str, str]]:
        return 200, json.dumps(body).encode(), {"Content-Type": "application/json; charset=utf-8"}

    def _list(self, container: str, query: dict[str, str]) -> list[dict]:
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        marker, limit = query.get("marker", ""), int(query.get("limit") or 10000)
        entries: dict[str, dict] = {}
        for name, obj in sorted(self.containers[container].items()):
            if not name.startswith(prefix):
                continue
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                subdir = name[:cut + len(delimiter)]
                entries.setdefault(subdir, {"subdir": subdir})
            else:
                entries[name] = obj.listing(name)
        return [entry for key, entry in sorted(entries.items()) if key > marker][:limit]

    def _read(self, container: str, name: str) -> bytes:
        """An object's bytes; a manifest's are its segments' in name order."""
        obj = self.containers[container][name]
        if obj.manifest is None:
            return obj.data
        seg_container, _, prefix = obj.manifest.partition("/")
        segments = self.containers.get(seg_container, {})
        return b"".join(segments[key].data for key in sorted(segments) if key.startswith(prefix))

    # -- for tests ----------------------------------------------------------

    def names(self, container: str, prefix: str = "") -> list[str]:
        with self.lock:
            return sorted(n for n in self.containers.get(container, {}) if n.startswith(prefix))

    def read(self, container: str, name: str) -> bytes:
        with self.lock:
            return self._read(container, name)

    def manifest(self, container: str, name: str) -> str | None:
        with self.lock:
            return self.containers[container][name].manifest
