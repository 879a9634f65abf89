"""freezer-agent 19.0.0 with ``--engine rsyncv2 --storage swift``, on the Swift stand-in.

The agent logs in to the Keystone stand-in, whose catalog then names the
Swift stand-in as the object store; Freezer's own swift storage (through
python-swiftclient) carries the data as segments under a manifest object.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from tests.integration.conftest import HOST
from tests.integration.swift_stub import SwiftStub
from tests.integration.test_freezer_agent import (
    OUR_LINE, T0, backup_args, common, make_level0, make_level1, restore_args, same_tree,
    small_tree, write)

pytestmark = pytest.mark.integration

#: Agent runs here take seconds; a failing segment upload makes Freezer
#: sleep a minute before its retry, so do not wait for ten of them.
TIMEOUT = 90


@pytest.fixture(scope="module")
def swift(keystone):
    with SwiftStub(token=keystone.token) as stub:
        keystone.object_store = stub.url
        try:
            yield stub
        finally:
            keystone.object_store = None


@dataclasses.dataclass
class SwiftContainer:
    """A Swift container on the stand-in, given to freezer-agent as ``--storage swift``."""

    stub: SwiftStub
    name: str

    def agent_args(self) -> list[str]:
        return ["--storage", "swift", "--container", self.name]

    def names(self, kind: str, backup: str) -> list[str]:
        """Object names under ``<kind>/rsyncv2/<host>_<backup>/``."""
        return self.stub.names(self.name, "%s/rsyncv2/%s_%s/" % (kind, HOST, backup))

    def data_sizes(self, backup: str) -> dict[str, int]:
        """level -> bytes of its data object (the segments its manifest names)."""
        return {name.split("/")[-2].split("_")[0]: len(self.stub.read(self.name, name))
                for name in self.names("data", backup) if name.endswith("/data")}


def test_incremental_backup_and_restore(agent, swift, tmp_path):
    """Level 0, then a new file, an insert, a delete (and a rename...), level 1, restore."""
    rng = random.Random(43)
    box = SwiftContainer(swift, "freezer-swift")
    src = tmp_path / "src"
    src.mkdir()
    make_level0(src, rng)
    # 1 MiB segments: level 0's data spans several, joined by its manifest.
    segment = ("--max-segment-size", str(1 << 20))
    run = agent(*backup_args(box, "main", src, *segment), timeout=TIMEOUT).ok()
    assert OUR_LINE in run.log, run.explain()
    assert run.metadata["curr_backup_level"] == 0
    assert ("POST", "/v3/auth/tokens") in agent.keystone.requests

    make_level1(src, rng)           # 5000 bytes inserted into big.bin, a delete...
    write(src / "docs/new.txt", b"a new file\n", T0 + 10**12)
    run = agent(*backup_args(box, "main", src, *segment), timeout=TIMEOUT).ok()
    assert run.metadata["curr_backup_level"] == 1

    levels = sorted(name.split("/")[-2].split("_")[0]
                    for name in box.names("metadata", "main") if name.endswith("/metadata"))
    assert levels == ["0", "1"]
    data = [name for name in box.names("data", "main") if name.endswith("/data")]
    for name in data:
        assert swift.manifest(box.name, name) == "%s/%s" % (
            box.name, name.rsplit("/", 1)[0] + "/segments")
    segments = box.names("data", "main")
    assert sum("/0_" in s and "/segments/" in s for s in segments) >= 4, segments
    sizes = box.data_sizes("main")
    # Level 1 holds the changes, not big.bin (4 MiB) again.
    assert sizes["0"] > 4 << 20 and sizes["1"] < 64 << 10, sizes

    dest = tmp_path / "restored"
    run = agent(*restore_args(box, "main", dest), timeout=TIMEOUT).ok()
    assert OUR_LINE in run.log
    same_tree(src, dest)

    # --action admin removes the chain through the storage's object deletes.
    agent("--action", "admin", "--remove-before-date", "2099-01-01T00:00:00",
          *common(box, "main"), timeout=TIMEOUT).ok()
    assert box.names("metadata", "main") == [] and box.names("data", "main") == []
    assert {method for method, _path, _query in swift.requests} <= {"GET", "PUT", "DELETE"}


def test_encrypted_round_trip(agent, swift, tmp_path):
    rng = random.Random(47)
    box = SwiftContainer(swift, "freezer-swift-enc")
    src = tmp_path / "src"
    marker = b"PLAINTEXT-MARKER-1357924680"
    small_tree(src, rng, marker)
    pass_file = tmp_path / "pass"
    pass_file.write_text("swift horse battery staple\n")
    agent(*backup_args(box, "enc", src, "--encrypt-pass-file", str(pass_file)),
          timeout=TIMEOUT).ok()
    stored = box.names("data", "enc")
    assert stored
    for name in stored:
        assert marker not in swift.read(box.name, name), "%s holds plaintext" % name
    dest = tmp_path / "restored"
    agent(*restore_args(box, "enc", dest, "--encrypt-pass-file", str(pass_file)),
          timeout=TIMEOUT).ok()
    same_tree(src, dest)
