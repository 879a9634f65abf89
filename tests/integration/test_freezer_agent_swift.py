"""freezer-agent 19.0.0 with ``--engine rsyncv2 --storage swift``, on a real Swift cluster.

The agent logs in to the Keystone stand-in, whose token is one the Swift
cluster's tempauth issued and whose catalog names that cluster as the
object store; Freezer's own swift storage (through python-swiftclient)
carries the data as segment objects under a manifest object.  Our CLI's
``--storage swift`` logs in the same way and reads and extends the same
container.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from tests.integration.conftest import HOST
from tests.integration.test_freezer_agent import (
    OUR_LINE, T0, backup_args, common, make_level0, make_level1, make_level2, restore_args, same_tree,
    small_tree, write)
from tests.swiftserver import SwiftServer, unique_container

pytestmark = pytest.mark.integration

#: Agent runs here take seconds; a failing segment upload makes Freezer
#: sleep a minute before its retry, so do not wait for ten of them.
TIMEOUT = 120


class RealSwift:
    """The session's Swift cluster, as the agent tests look at it."""

    def __init__(self, server: SwiftServer) -> None:
        self.server = server
        self.client = server.client()

    def names(self, container: str, prefix: str = "") -> list[str]:
        return self.server.object_names(container, prefix)

    def read(self, container: str, name: str) -> bytes:
        return self.client.get_object(container, name)[1]

    def manifest(self, container: str, name: str) -> str | None:
        """The X-Object-Manifest (a Dynamic Large Object's segment prefix) of an object."""
        return self.client.head_object(container, name).get("x-object-manifest")

    def is_slo(self, container: str, name: str) -> bool:
        return self.client.head_object(container, name).get("x-static-large-object") == "True"


@pytest.fixture(scope="module")
def swift(keystone, swift_server):
    """The Keystone stand-in hands out a tempauth token of the cluster and names it in its catalog."""
    token = keystone.token
    keystone.token = swift_server.token()
    keystone.object_store = swift_server.storage_url
    try:
        yield RealSwift(swift_server)
    finally:
        keystone.token = token
        keystone.object_store = None


@dataclasses.dataclass
class SwiftContainer:
    """A Swift container of the cluster, given to freezer-agent as ``--storage swift``."""

    swift: RealSwift
    name: str

    def agent_args(self) -> list[str]:
        return ["--storage", "swift", "--container", self.name]

    def names(self, kind: str, backup: str) -> list[str]:
        """Object names under ``<kind>/rsyncv2/<host>_<backup>/``."""
        return self.swift.names(self.name, "%s/rsyncv2/%s_%s/" % (kind, HOST, backup))

    def levels(self, backup: str) -> list[str]:
        """The published levels, as ``<level>_<ts>`` names' levels, sorted."""
        return sorted(name.split("/")[-2].split("_")[0]
                      for name in self.names("metadata", backup) if name.endswith("/metadata"))

    def data_sizes(self, backup: str) -> dict[str, int]:
        """level -> bytes of its data object (Swift joins the segments its manifest names)."""
        return {name.split("/")[-2].split("_")[0]: len(self.swift.read(self.name, name))
                for name in self.names("data", backup) if name.endswith("/data")}


def test_incremental_backup_and_restore(agent, swift, tmp_path):
    """Level 0, then a new file, an insert, a delete (and a rename...), level 1, restore."""
    rng = random.Random(43)
    box = SwiftContainer(swift, unique_container("agent"))
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

    assert box.levels("main") == ["0", "1"]
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


def test_encrypted_round_trip(agent, swift, tmp_path):
    rng = random.Random(47)
    box = SwiftContainer(swift, unique_container("agent-enc"))
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


def cli_args(box: SwiftContainer, name: str) -> list[str]:
    """Our CLI's storage and name options for the same container (login from the OS_* variables)."""
    return ["--storage", "swift", "--container", box.name, "--hostname", HOST, "--backup-name", name]


def test_agent_and_cli_read_each_others_levels(agent, swift, tmp_path):
    """One chain written by both: level 0 by the agent, 1 by our CLI, 2 by the agent.

    Each restores the whole chain: the agent reads our SLO level, our CLI
    the agent's DLO levels, and both end with the source tree.
    """
    rng = random.Random(53)
    box = SwiftContainer(swift, unique_container("cross"))
    src = tmp_path / "src"
    src.mkdir()
    make_level0(src, rng)
    segment = ("--max-segment-size", str(1 << 20))
    agent(*backup_args(box, "x", src, *segment), timeout=TIMEOUT).ok()

    restored0 = tmp_path / "cli-restore-0"
    done = agent.cli("restore", *cli_args(box, "x"), "--restore-abs-path", str(restored0))
    assert done.returncode == 0, done.stderr
    same_tree(src, restored0)

    make_level1(src, rng)
    done = agent.cli("backup", *cli_args(box, "x"), "--path-to-backup", str(src),
                     "--max-segment-size", str(1 << 20))
    assert done.returncode == 0 and "backup level 1" in done.stdout, done.stdout + done.stderr
    assert box.levels("x") == ["0", "1"]
    ours = [n for n in box.names("data", "x") if n.endswith("/data") and "/1_" in n]
    theirs = [n for n in box.names("data", "x") if n.endswith("/data") and "/0_" in n]
    assert swift.manifest(box.name, theirs[0]) and not swift.is_slo(box.name, theirs[0])
    assert swift.manifest(box.name, ours[0]) is None

    make_level2(src, rng)
    run = agent(*backup_args(box, "x", src, *segment), timeout=TIMEOUT).ok()
    assert run.metadata["curr_backup_level"] == 2
    assert box.levels("x") == ["0", "1", "2"]

    by_agent = tmp_path / "agent-restore"
    agent(*restore_args(box, "x", by_agent), timeout=TIMEOUT).ok()
    same_tree(src, by_agent)
    by_cli = tmp_path / "cli-restore"
    done = agent.cli("restore", *cli_args(box, "x"), "--restore-abs-path", str(by_cli))
    assert done.returncode == 0 and "up to level 2" in done.stdout, done.stdout + done.stderr
    same_tree(src, by_cli)
    listed = agent.cli("list", *cli_args(box, "x"))
    assert listed.returncode == 0 and listed.stdout.count("    level ") == 3, listed.stdout
