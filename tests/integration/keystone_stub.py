"""A minimal Keystone v3 stand-in on 127.0.0.1 that freezer-agent can log in to."""

from __future__ import annotations

import datetime
import http.server
import json
import sys
import threading
import uuid
from typing import Any

from tests.integration.httpstub import StubServer, reply

TOKEN_LIFETIME = datetime.timedelta(hours=2)


def _iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


class KeystoneStub(StubServer):
    """Serves version discovery and password/token logins, and records the requests.

    The catalog names this stub as the identity service and, while
    ``object_store`` holds a URL, that URL as the object-store (Swift) one.
    """

    name = "keystone-stub"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: list[tuple[str, str]] = []
        self.token = uuid.uuid4().hex
        self.object_store: str | None = None
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub.requests.append(("GET", self.path))
                path = self.path.split("?", 1)[0].rstrip("/")
                if path in ("", "/v3"):
                    self._reply(200 if path else 300, stub.versions())
                elif path == "/v3/auth/tokens":
                    self._reply(200, stub.token_body(),
                                {"X-Subject-Token": stub.token})
                else:
                    self._reply(404, {"error": {"code": 404,
                                                "message": "not here",
                                                "title": "Not Found"}})

            def do_HEAD(self) -> None:
                stub.requests.append(("HEAD", self.path))
                self._reply(200, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                stub.requests.append(("POST", self.path))
                if self.path.split("?", 1)[0].rstrip("/") == "/v3/auth/tokens":
                    self._reply(201, stub.token_body(),
                                {"X-Subject-Token": stub.token})
                else:
                    self._reply(404, {"error": {"code": 404,
                                                "message": "not here",
                                                "title": "Not Found"}})

            def _reply(self, code: int, body: Any,
                       headers: dict[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                reply(self, code, data, {"Content-Type": "application/json",
                                         **(headers or {})})

        super().__init__(Handler, host, port)

    @property
    def url(self) -> str:
        """The identity endpoint to give as OS_AUTH_URL / --os-auth-url."""
        return self.root + "/v3"

    def versions(self) -> dict:
        """Keystone's version discovery document (v3 only)."""
        return {"version": {
            "id": "v3.14", "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": self.url + "/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}}

    def token_body(self) -> dict:
        """A scoped token with a catalog naming this stub for every interface."""
        now = datetime.datetime.now(datetime.timezone.utc)

        def service(kind: str, name: str, url: str) -> dict:
            return {"type": kind, "name": name, "id": uuid.uuid4().hex,
                    "endpoints": [{"id": uuid.uuid4().hex, "interface": iface,
                                   "region": "RegionOne",
                                   "region_id": "RegionOne",
                                   "url": url}
                                  for iface in ("public", "internal", "admin")]}

        catalog = [service("identity", "keystone", self.url)]
        if self.object_store:
            catalog.append(service("object-store", "swift", self.object_store))

        return {"token": {
            "methods": ["password"],
            "issued_at": _iso(now),
            "expires_at": _iso(now + TOKEN_LIFETIME),
            "audit_ids": [uuid.uuid4().hex[:22]],
            "user": {"id": "u1", "name": "freezer",
                     "domain": {"id": "default", "name": "Default"},
                     "password_expires_at": None},
            "project": {"id": "p1", "name": "freezer",
                        "domain": {"id": "default", "name": "Default"}},
            "roles": [{"id": "r1", "name": "admin"}],
            "is_domain": False,
            "catalog": catalog}}

    def env(self) -> dict[str, str]:
        """OS_* variables that make freezer-agent log in here."""
        return {"OS_AUTH_URL": self.url, "OS_IDENTITY_API_VERSION": "3",
                "OS_USERNAME": "freezer", "OS_PASSWORD": "secret",
                "OS_PROJECT_NAME": "freezer",
                "OS_USER_DOMAIN_NAME": "Default",
                "OS_PROJECT_DOMAIN_NAME": "Default",
                "OS_REGION_NAME": "RegionOne"}


if __name__ == "__main__":      # run by hand: prints the URL, serves until killed
    with KeystoneStub(port=int(sys.argv[1]) if len(sys.argv) > 1 else 0) as ks:
        print(ks.url, flush=True)
        threading.Event().wait()
