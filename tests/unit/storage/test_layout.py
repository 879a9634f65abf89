"""Unit tests of the storage layout module: paths, name validation and the Backup handle."""

from __future__ import annotations

import pytest

from freezer_rsyncv2.errors import ConfigError, FormatError, StorageError
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


# -- strict parsing of stored names (hostile storage) ------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("0_0", (0, 0)),
    (f"{layout.MAX_LEVEL}_{layout.MAX_TIMESTAMP}", (layout.MAX_LEVEL, layout.MAX_TIMESTAMP)),
    (f"{layout.MAX_LEVEL + 1}_5", None),            # past the level bound
    ("100000000000_5", None),                       # would make verify count to 10**11
    (f"1_{layout.MAX_TIMESTAMP + 1}", None),        # a timestamp no date can show
    ("1_99999999999999999999", None),
    ("1_" + "9" * 5000, None),                      # int() would refuse (and cost)
    ("١٢_5", None), ("1_١٢", None),                 # non-ASCII digits
    ("²_5", None),                                  # isdigit() but not int()-able
    ("+1_5", None), ("1_+5", None), ("-1_5", None),
    (" 1_5", None), ("1_5 ", None), ("1_5\n", None), ("1 _5", None),
    ("1_5_", None), ("01_5", None), ("1_05", None),
])
def test_parse_level_dir_is_strict(name: str, expected: tuple[int, int] | None) -> None:
    assert layout.parse_level_dir(name) == expected


@pytest.mark.parametrize("name, expected", [
    ("0", 0), ("1700000000", 1700000000), (str(layout.MAX_TIMESTAMP), layout.MAX_TIMESTAMP),
    (str(layout.MAX_TIMESTAMP + 1), None), ("99999999999999999999", None), ("9" * 5000, None),
    ("١٢", None), ("+5", None), ("-5", None), (" 5", None), ("5 ", None), ("5\n", None),
    ("05", None), ("", None), ("5.0", None), ("0x5", None),
])
def test_parse_chain_dir_is_strict(name: str, expected: int | None) -> None:
    assert layout.parse_chain_dir(name) == expected


def test_every_listed_timestamp_can_be_printed() -> None:
    """MAX_TIMESTAMP is the last second datetime can show (``list`` prints each level's date)."""
    import datetime
    last = datetime.datetime.fromtimestamp(layout.MAX_TIMESTAMP, datetime.timezone.utc)
    assert last.strftime("%Y-%m-%dT%H:%M:%SZ") == "9999-12-31T23:59:59Z"


@pytest.mark.parametrize("kwargs", [
    {"level": layout.MAX_LEVEL + 1},
    {"timestamp": layout.MAX_TIMESTAMP + 1},
    {"level_zero_timestamp": layout.MAX_TIMESTAMP + 1},
    {"level_zero_timestamp": "5\n"},
])
def test_backup_refuses_what_no_listing_would_show(kwargs: dict[str, object]) -> None:
    """A level written past the bounds would never be listed: refuse to build it."""
    args: dict[str, object] = {"engine": FakeEngine(), "hostname_backup_name": "h",
                               "level_zero_timestamp": 1, "timestamp": 1, "level": 0}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        Backup(**args)  # type: ignore[arg-type]
    ok = Backup(FakeEngine(), "h", layout.MAX_TIMESTAMP, layout.MAX_TIMESTAMP, layout.MAX_LEVEL)
    assert ok.level == layout.MAX_LEVEL


class ListingOnly(PathOnly):
    """A storage with only Freezer's primitives (no ``read_object``/``is_published``)."""

    def __init__(self, storage_path: str, files: dict[str, bytes]) -> None:
        super().__init__(storage_path)
        self.files = files

    def listdir(self, path: str) -> list[str]:
        prefix = f"{path}/"
        return sorted({key[len(prefix):].split("/")[0] for key in self.files
                       if key.startswith(prefix)})

    def get_file(self, from_path: str, to_path: str) -> None:
        with open(to_path, "wb") as out:
            out.write(self.files[from_path])


def test_metadata_of_a_freezer_storage_is_bounded_too() -> None:
    storage = ListingOnly("/s", {})
    backup = Backup(FakeEngine(), "h", 1, 1, 0, storage=storage)  # type: ignore[arg-type]
    storage.files[backup.metadata_path] = b" " * layout.MAX_METADATA_SIZE + b"{}"
    with pytest.raises(StorageError, match="more than 1048576 bytes") as info:
        backup.metadata()
    assert type(info.value) is StorageError
    storage.files[backup.metadata_path] = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(FormatError, match="not JSON"):
        backup.metadata()


def test_get_increments_on_a_freezer_storage_uses_its_listing() -> None:
    storage = ListingOnly("/s", {})
    zero = Backup(FakeEngine(), "h", 5, 5, 0, storage=storage)  # type: ignore[arg-type]
    base = zero.increments_metadata_path
    for rel in ("0_5/metadata", "1_6/metadata", "2_7/other", "١_8/metadata", "0_9/metadata"):
        storage.files[f"{base}/{rel}"] = b"{}"
    assert {level: b.timestamp for level, b in zero.get_increments().items()} == {0: 5, 1: 6}
