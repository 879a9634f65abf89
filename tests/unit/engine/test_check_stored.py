"""The base class checks a level's stored data size before it writes any metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.engine.rsyncv2 import Rsyncv2Engine
from freezer_rsyncv2.storage.local import LocalStorage

NAME = "host_check"


class ShortLocalStorage(LocalStorage):
    """Stores all but the last ``cut`` bytes of a level's data, and says nothing."""

    cut = 5

    def write_backup(self, rich_queue: Any, backup: Any) -> None:
        super().write_backup(rich_queue, backup)
        path = backup.copy(self).data_path
        os.truncate(path, os.path.getsize(path) - self.cut)


def backup(engine: Rsyncv2Engine, src: Path) -> int:
    return engine.backup(str(src), NAME, incremental=True, max_level=None,
                         always_level=None, restart_always_level=None)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    (path / "a.bin").write_bytes(os.urandom(100_000))
    return path


def test_our_storages_are_checked_too(tmp_path, src):
    storage = ShortLocalStorage(str(tmp_path / "c"))
    engine = Rsyncv2Engine(storage=storage, compression="none")
    with pytest.raises(errors.StorageError,
                       match=r"level 0: .*/data holds \d+ bytes after \d+ bytes were written"):
        backup(engine, src)
    assert storage.stored_size(str(tmp_path / "c" / "none")) is None
    assert storage.listdir(os.path.join(storage.storage_path, "metadata", "rsyncv2")) == []
    assert list((tmp_path / "c").rglob("engine_metadata")) == []


def test_a_complete_level_passes_and_counts_what_the_storage_got(tmp_path, src):
    storage = LocalStorage(str(tmp_path / "c"))
    engine = Rsyncv2Engine(storage=storage, compression="none",
                           max_segment_size=16 << 10)
    assert backup(engine, src) == 0
    (src / "b.txt").write_bytes(b"more\n")
    assert backup(engine, src) == 1
    data = next((tmp_path / "c").glob("data/rsyncv2/*/*/1_*/data"))
    assert data.stat().st_size == engine.handed_bytes == engine.last_summary.stored_bytes


def test_storages_that_cannot_tell_a_size_are_trusted(tmp_path, src):
    class NoSize:
        """Not one of ours, and no ``stored_size``: as Freezer's swift, ssh and ftp storages."""

        def __init__(self, inner: LocalStorage) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "stored_size":
                raise AttributeError(name)
            return getattr(self.inner, name)

    storage = NoSize(ShortLocalStorage(str(tmp_path / "c")))
    assert backup(Rsyncv2Engine(storage=storage, compression="none"), src) == 0
