"""freezer-agent 19.0.0 with ``--engine rsyncv2 --storage s3``, on an S3-API server (moto).

Freezer's own S3 storage carries the data; our engine fixes its metadata
upload and checks its data upload (``freezer_rsyncv2.freezer_compat``).
"""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from tests.integration.conftest import HOST
from tests.integration.test_freezer_agent import (
    OUR_LINE, T0, backup_args, make_level0, make_level1, rand, restore_args, same_tree,
    small_tree, write)
from tests.s3server import S3Server, object_keys, unique_bucket

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class S3Container:
    """``bucket/prefix`` on the test server, given to freezer-agent as ``--storage s3``."""

    server: S3Server
    bucket: str
    prefix: str = "backups"

    def agent_args(self) -> list[str]:
        return ["--storage", "s3", "--endpoint", self.server.endpoint,
                "--access-key", self.server.access_key,
                "--secret-key", self.server.secret_key,
                "--container", "%s/%s" % (self.bucket, self.prefix)]

    def keys(self, kind: str, name: str) -> list[str]:
        """Object keys under ``<prefix>/<kind>/rsyncv2/<host>_<name>/``."""
        return object_keys(self.server.client(), self.bucket, "%s/%s/rsyncv2/%s_%s/" % (
            self.prefix, kind, HOST, name))

    def size(self, key: str) -> int:
        head = self.server.client().head_object(Bucket=self.bucket, Key=key)
        return int(head["ContentLength"])


@pytest.fixture
def s3(s3_server: S3Server) -> S3Container:
    # freezer-agent creates the bucket (S3Storage.prepare).
    return S3Container(s3_server, unique_bucket("agent"))


def levels_listed(s3: S3Container, name: str) -> list[str]:
    """The published levels (``<level>_<ts>``) of the name's chains."""
    return sorted(key.split("/")[-2].split("_")[0]
                  for key in s3.keys("metadata", name) if key.endswith("/metadata"))


def test_incremental_backup_and_restore(agent, s3, tmp_path):
    """Level 0, then a new file, an insert, a delete (and a rename...), level 1, restore."""
    rng = random.Random(31)
    src = tmp_path / "src"
    src.mkdir()
    make_level0(src, rng)
    run = agent(*backup_args(s3, "main", src)).ok()
    assert OUR_LINE in run.log, run.explain()
    assert run.metadata["curr_backup_level"] == 0

    make_level1(src, rng)           # 5000 bytes inserted into big.bin, a delete...
    write(src / "docs/new.txt", b"a new file\n", T0 + 10**12)
    run = agent(*backup_args(s3, "main", src)).ok()
    assert run.metadata["curr_backup_level"] == 1
    assert levels_listed(s3, "main") == ["0", "1"]
    data = {key.split("/")[-2].split("_")[0]: s3.size(key)
            for key in s3.keys("data", "main") if key.endswith("/data")}
    # Level 1 holds the changes, not big.bin (4 MiB) again.
    assert data["0"] > 4 << 20 and data["1"] < 64 << 10, data

    dest = tmp_path / "restored"
    run = agent(*restore_args(s3, "main", dest)).ok()
    assert OUR_LINE in run.log
    same_tree(src, dest)


def test_encrypted_round_trip(agent, s3, tmp_path):
    rng = random.Random(37)
    src = tmp_path / "src"
    marker = b"PLAINTEXT-MARKER-0987654321"
    small_tree(src, rng, marker)
    pass_file = tmp_path / "pass"
    pass_file.write_text("s3 horse battery staple\n")
    agent(*backup_args(s3, "enc", src, "--encrypt-pass-file", str(pass_file))).ok()
    client = s3.server.client()
    for key in s3.keys("data", "enc"):
        body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert marker not in body, "%s holds plaintext" % key
    dest = tmp_path / "restored"
    agent(*restore_args(s3, "enc", dest, "--encrypt-pass-file", str(pass_file))).ok()
    same_tree(src, dest)


def test_lost_data_upload_fails_the_backup(agent, s3, tmp_path):
    """A failed multipart upload fails the backup (Freezer's would return).

    S3 refuses parts under 5 MiB but the last, so 1 MiB segments make
    the upload's completion fail; the agent must not report a backup.
    Freezer's ``upload_stream`` logs that, aborts and returns; the one our
    engine gives the storage object raises, so the error is the storage's.
    """
    src = tmp_path / "src"
    write(src / "big.bin", rand(random.Random(41), 3 << 20))
    run = agent(*backup_args(s3, "lost", src, "--max-segment-size", str(1 << 20)),
                timeout=60)
    assert run.returncode != 0, run.explain()
    assert "EntityTooSmall" in run.log, run.explain()
    assert "Critical Error: S3 CompleteMultipartUpload %s/backups/data/rsyncv2/%s_lost/" % (
        s3.bucket, HOST) in run.log, run.explain()
    assert "Upload stream to S3 error" not in run.log     # Freezer's, replaced
    assert s3.keys("metadata", "lost") == []
    # No level is listed (no metadata), nor any of its engine metadata.
    assert s3.keys("data", "lost") == []


#: Builds Freezer's S3 client and ours (freezer_s3.lean_client) for the
#: same storage, each measured by tracemalloc while alive, and uses both.
LEAN_CLIENT = """
import gc, json, os, tracemalloc
from freezer.storage import s3
from freezer_rsyncv2 import freezer_s3

storage = s3.S3Storage(os.environ["KEY"], os.environ["SECRET"], os.environ["ENDPOINT"],
                       os.environ["BUCKET"] + "/lean", 32 << 20, skip_prepare=True)

def held(make):
    gc.collect()
    tracemalloc.start()
    client = make()
    gc.collect()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return client, size

# Freezer's own method (our import hook wraps it: freezer_compat.adapt_s3_module)
method = type(storage).get_s3_connection
theirs, their_size = held(lambda: getattr(method, "__wrapped__", method)(storage))
adapted = storage.get_s3_connection()
ours, our_size = held(lambda: freezer_s3.lean_client(
    storage.access_key, storage.secret_key, storage.endpoint))
ours.create_bucket(Bucket=os.environ["BUCKET"])
ours.put_object(Bucket=os.environ["BUCKET"], Key="lean/x", Body=b"written by ours")
body = theirs.get_object(Bucket=os.environ["BUCKET"], Key="lean/x")["Body"].read()
doc = lambda client: client.meta.service_model.operation_model("PutObject").documentation
print(json.dumps({"theirs": their_size, "ours": our_size, "body": body.decode(),
                  "their_doc": len(doc(theirs)), "our_doc": len(doc(ours)),
                  "adapted_doc": len(doc(adapted)), "adapted_twice": adapted is storage.get_s3_connection(),
                  "same_operations": sorted(theirs.meta.method_to_api_mapping)
                  == sorted(ours.meta.method_to_api_mapping)}))
"""


def test_lean_client_holds_less_and_works(agent, s3):
    """The client the engine gives Freezer's S3 storage holds a third of Freezer's.

    Same operations and settings, talking to the same server; botocore's
    endpoint data of other services and the model's documentation are
    not kept (docs/freezer-agent.rst, "Memory").
    """
    done = agent.venv_python(LEAN_CLIENT, env={
        "KEY": s3.server.access_key, "SECRET": s3.server.secret_key,
        "ENDPOINT": s3.server.endpoint, "BUCKET": s3.bucket})
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["body"] == "written by ours"
    assert got["same_operations"]
    assert got["their_doc"] > 0 and got["our_doc"] == 0
    assert got["ours"] < got["theirs"] / 3, got
    # the storage itself, as freezer-agent imports it, makes one lean client
    assert got["adapted_doc"] == 0 and got["adapted_twice"], got
