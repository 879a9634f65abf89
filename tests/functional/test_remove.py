"""remove: whole chains older than a cut-off go, never a backup's newest chain, never half listed."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import pytest

from freezer_rsyncv2 import cli, retention
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.storage import local
from tests.functional import treeutil
from tests.s3server import S3Server, unique_bucket

NAME = "h_n"


def run(*argv: Any) -> int:
    return cli.main([str(a) for a in argv])


def iso(ts: int) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture
def chains(tmp_path: Any, clock: Any) -> dict[str, Any]:
    """Three chains of h_n: A (levels 0, 1), B (level 0), C (levels 0, 1); their times."""
    src, container = tmp_path / "src", str(tmp_path / "store")
    base = ["--container", container, "--backup-name", "n", "--hostname", "h"]
    times = []
    for step, fresh in enumerate([True, False, True, True, False]):
        treeutil.write(str(src / "f.txt"), b"version %d\n" % step)
        extra = ["--no-incremental"] if fresh else []
        assert run("backup", "--path-to-backup", src, *base, *extra) == 0
        times.append(clock.last)
    return {"src": src, "container": container, "base": base, "times": times, "tmp": tmp_path}


def listed(container: str) -> list[tuple[int, list[int]]]:
    storage = local.LocalStorage(container, skip_prepare=True)
    engine = rsyncv2.Rsyncv2Engine(storage=storage)
    return [(int(c[0].level_zero_timestamp), sorted(c)) for c in storage.list_chains(engine, NAME)]


def test_old_chains_go_whole_and_the_rest_restores(chains: dict[str, Any], capsys: Any) -> None:
    t = chains["times"]
    capsys.readouterr()
    assert run("remove", *chains["base"], "--remove-from-date", iso(t[3]), "--dry-run") == 0
    out = capsys.readouterr().out
    assert out.count("would remove") == 2 and iso(t[0]).replace("T", " ") not in out
    assert [c for c, _ in listed(chains["container"])] == [t[0], t[2], t[3]]    # dry run: nothing went

    assert run("remove", *chains["base"], "--remove-from-date", iso(t[3])) == 0
    assert capsys.readouterr().out.count("removed h_n chain") == 2
    assert listed(chains["container"]) == [(t[3], [0, 1])]
    left = sorted(os.listdir(os.path.join(chains["container"], "data", "rsyncv2", NAME)))
    assert left == [str(t[3])]       # data of the removed chains gone too
    dest = str(chains["tmp"] / "restored")
    assert run("restore", *chains["base"], "--restore-abs-path", dest) == 0
    assert open(os.path.join(dest, "f.txt"), "rb").read() == b"version 4\n"


def test_the_newest_chain_always_stays(chains: dict[str, Any], capsys: Any) -> None:
    assert run("remove", *chains["base"], "--remove-from-date", "2999-01-01T00:00:00", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    t = chains["times"]
    assert [(r["level_zero_timestamp"], r["levels"], r["newest_timestamp"]) for r in doc["removed"]] == [
        (t[0], 2, t[1]), (t[2], 1, t[2])]
    assert doc["dry_run"] is False and all(r["size"] > 0 for r in doc["removed"])
    assert listed(chains["container"]) == [(t[3], [0, 1])]
    assert run("remove", *chains["base"], "--remove-older-than", "0") == 0
    assert "nothing to remove" in capsys.readouterr().out
    assert listed(chains["container"]) == [(t[3], [0, 1])]


def test_a_removal_killed_midway_leaves_no_listed_chain(chains: dict[str, Any], capsys: Any) -> None:
    class Dies(local.LocalStorage):
        calls = 0

        def rmtree(self, path: str) -> None:
            Dies.calls += 1
            if Dies.calls > 1:
                raise KeyboardInterrupt     # killed after the first deletion
            super().rmtree(path)

    storage = Dies(chains["container"], skip_prepare=True)
    engine = rsyncv2.Rsyncv2Engine(storage=storage)
    t = chains["times"]
    first = retention.plan(storage, engine, [NAME], t[2])
    assert [r.chain for r in first] == [t[0]]
    with pytest.raises(KeyboardInterrupt):
        retention.remove(storage, engine, first[0])
    assert [c for c, _ in listed(chains["container"])] == [t[2], t[3]]    # A is gone at once
    assert os.path.isdir(os.path.join(chains["container"], "data", "rsyncv2", NAME, str(t[0])))
    # What the killed run left, the sweep removes.
    assert run("cleanup", *chains["base"], "--sweep-age", "0") == 0
    assert not os.path.exists(os.path.join(chains["container"], "data", "rsyncv2", NAME, str(t[0])))
    assert not os.path.exists(os.path.join(chains["container"], "metadata", "rsyncv2", NAME, str(t[0])))


def test_remove_of_a_missing_backup_exits_1(tmp_path: Any, capsys: Any) -> None:
    os.makedirs(tmp_path / "store")
    assert run("remove", "--container", tmp_path / "store", "--backup-name", "x", "--hostname", "h",
               "--remove-older-than", "1") == 1
    assert "no backup named h_x" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:        # argparse: a usage error
        run("remove", "--container", tmp_path / "store", "--remove-older-than", "-1")
    assert info.value.code == 2
    assert "number of days >= 0" in capsys.readouterr().err


def test_remove_on_s3(tmp_path: Any, clock: Any, s3_server: S3Server) -> None:
    storage = s3_server.storage(unique_bucket("rm"), create_bucket=True)
    src = tmp_path / "src"
    for step in range(3):
        treeutil.write(str(src / "f.txt"), b"s3 version %d\n" % step)
        engine = rsyncv2.Rsyncv2Engine(storage=storage)
        engine.backup(str(src), NAME, incremental=False, max_level=None, always_level=None,
                      restart_always_level=None)
    engine = rsyncv2.Rsyncv2Engine(storage=storage)
    chains = storage.list_chains(engine, NAME)
    assert len(chains) == 3
    removals = retention.plan(storage, engine, [NAME], 2**40)
    assert len(removals) == 2
    for removal in removals:
        retention.remove(storage, engine, removal)
    left = storage.list_chains(engine, NAME)
    assert [int(c[0].level_zero_timestamp) for c in left] == [int(chains[-1][0].level_zero_timestamp)]
    keys = storage.listdir(f"{storage.storage_path}/data/rsyncv2/{NAME}")
    assert keys == [str(left[0][0].level_zero_timestamp)]
