"""Unit tests of the storage base module: the error types, the Storage ABC, its clock and re-exports."""

from __future__ import annotations

import pytest

from freezer_rsyncv2.errors import BackupNotFoundError, StorageError
from freezer_rsyncv2.storage import layout
from freezer_rsyncv2.storage.base import LevelZeroNotFoundError, Storage


def test_not_found_error_is_index_error() -> None:
    assert issubclass(LevelZeroNotFoundError, BackupNotFoundError)
    assert issubclass(LevelZeroNotFoundError, StorageError)
    assert issubclass(LevelZeroNotFoundError, IndexError)


def test_storage_is_abstract() -> None:
    with pytest.raises(TypeError):
        Storage("/x", 10)  # type: ignore[abstract]


def test_now_is_int_seconds() -> None:
    assert isinstance(layout.now(), int)
