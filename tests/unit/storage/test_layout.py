"""Unit tests of the storage layout module: paths, name validation and the Backup handle."""

from __future__ import annotations

import pytest

from freezer_rsyncv2.errors import ConfigError, StorageError
from freezer_rsyncv2.storage import layout
from freezer_rsyncv2.storage.layout import Backup


class FakeEngine:
    def __init__(self, name: str = "rsyncv2") -> None:
        self.name = name


class PathOnly:
    """A storage stand-in: Backup only reads ``storage_path`` to build paths."""

    def __init__(self, storage_path: str) -> None:
        self.storage_path = storage_path


def test_path_join() -> None:
    assert layout.path_join("/s", "data", 1, "x") == "/s/data/1/x"
    # as Freezer's utils.path_join: no normalization at all
    assert layout.path_join("/s/", "metadata") == "/s//metadata"
    assert layout.path_join("/", "metadata") == "//metadata"
    assert layout.path_join("bucket/prefix", "data") == "bucket/prefix/data"
    assert layout.path_join("only") == "only"


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "/a", "a\0b", None, 5])
def test_validate_name_rejects(bad: object) -> None:
    with pytest.raises(ConfigError):
        layout.validate_name(bad)


@pytest.mark.parametrize("good", ["host_backup", "a.b", "...", "ü-x", "a b"])
def test_validate_name_accepts(good: str) -> None:
    assert layout.validate_name(good) == good


def test_backup_paths_match_freezer_layout() -> None:
    backup = Backup(FakeEngine(), "host_x", 100, 200, 1, storage=PathOnly("/s"))
    assert backup.increments_data_path == "/s/data/rsyncv2/host_x/100"
    assert backup.increments_metadata_path == "/s/metadata/rsyncv2/host_x/100"
    assert backup.data_prefix_path == "/s/data/rsyncv2/host_x/100/1_200"
    assert backup.data_path == "/s/data/rsyncv2/host_x/100/1_200/data"
    assert backup.engine_metadata_path == "/s/data/rsyncv2/host_x/100/1_200/engine_metadata"
    assert backup.segments_path == "/s/data/rsyncv2/host_x/100/1_200/segments"
    assert backup.metadata_path == "/s/metadata/rsyncv2/host_x/100/1_200/metadata"


def test_backup_without_storage_has_no_paths() -> None:
    backup = Backup(FakeEngine(), "host_x", 100, 100, 0)
    assert backup.storage is None
    assert not hasattr(backup, "data_path")
    with pytest.raises(StorageError):
        backup.get_increments()


def test_backup_copy_rebinds_storage() -> None:
    backup = Backup(FakeEngine(), "host_x", 100, 200, 1)
    copied = backup.copy(PathOnly("/t"))
    assert copied is not backup
    assert (copied.level, copied.timestamp, copied.level_zero_timestamp) == (1, 200, 100)
    assert copied.data_path == "/t/data/rsyncv2/host_x/100/1_200/data"


def test_backup_attributes_and_repr() -> None:
    engine = FakeEngine()
    backup = Backup(engine, "host_x", "100", 200, 1)
    assert backup.engine is engine
    assert backup.hostname_backup_name == "host_x"
    assert backup.level_zero_timestamp == 100
    assert repr(backup) == ("Backup(engine='rsyncv2', hostname_backup_name='host_x', "
                            "level_zero_timestamp=100, level=1, timestamp=200)")


@pytest.mark.parametrize("kwargs", [
    {"hostname_backup_name": "../etc"},
    {"hostname_backup_name": ".."},
    {"timestamp": 1.5},
    {"timestamp": -1},
    {"level": True},
    {"level_zero_timestamp": "01"},
])
def test_backup_rejects_bad_values(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"engine": FakeEngine(), "hostname_backup_name": "h",
                               "level_zero_timestamp": 1, "timestamp": 1, "level": 0}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        Backup(**args)  # type: ignore[arg-type]


def test_backup_rejects_bad_engine_name() -> None:
    with pytest.raises(ConfigError):
        Backup(FakeEngine("a/b"), "h", 1, 1, 0)


def test_parse_level_dir() -> None:
    assert layout.parse_level_dir("0_100") == (0, 100)
    assert layout.parse_level_dir("12_1700000000") == (12, 1700000000)
    for junk in ("1_", "_1", "1_2_3", "01_2", "a_1", "1", ".1_2.tmp"):
        assert layout.parse_level_dir(junk) is None
