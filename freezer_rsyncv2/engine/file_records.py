"""A regular file's data records: a delta against the previous level's signature, or the whole data.

``for_basis`` picks the form; both take the file's data and runs of zeros in
order and count the bytes they send as literals and as copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from freezer_rsyncv2 import manifest as mf
from freezer_rsyncv2.rsync import matcher as rmatch
from freezer_rsyncv2.stream import entrymap, records


class WholeRecords:
    """No basis: the data as LITERAL records, runs of zeros as HOLE records."""

    def __init__(self) -> None:
        self.literal_bytes = 0
        self.copied_bytes = 0

    def fields(self, sparse: bool) -> dict[str, Any]:
        """The ENTRY record's data fields."""
        return {"data": entrymap.DATA_FULL, "sp": sparse or None}

    def data(self, chunk: bytes) -> Iterable[bytes]:
        self.literal_bytes += len(chunk)
        return records.literal_head(len(chunk)), chunk

    def zeros(self, length: int) -> Iterable[bytes]:
        return (records.hole(length),)

    def finish(self) -> Iterable[bytes]:
        return ()


class DeltaRecords:
    """Against the basis's signature: the rsync matcher's COPY, LITERAL and HOLE records."""

    def __init__(self, basis: mf.ManifestEntry, prev_name: bytes | None) -> None:
        self._basis = basis
        self._prev_name = prev_name
        self._matcher = rmatch.Matcher(basis.signature())

    @property
    def literal_bytes(self) -> int:
        return self._matcher.literal_bytes

    @property
    def copied_bytes(self) -> int:
        return self._matcher.copied_bytes

    def fields(self, sparse: bool) -> dict[str, Any]:
        """The ENTRY record's data fields: the basis is ``prev_name`` (a rename) or the same path."""
        return {"data": entrymap.DATA_DELTA, "sp": sparse or None, "pn": self._prev_name,
                "bl": self._basis.block_len, "bs": self._basis.entry.size}

    def data(self, chunk: bytes) -> Iterator[bytes]:
        return _ops(self._matcher.feed(chunk))

    def zeros(self, length: int) -> Iterator[bytes]:
        return _ops(self._matcher.zeros(length))

    def finish(self) -> Iterator[bytes]:
        return _ops(self._matcher.finish())


def for_basis(basis: mf.ManifestEntry | None, prev_name: bytes | None) -> WholeRecords | DeltaRecords:
    """A delta when the previous level left a signature to match against, else the whole data."""
    return WholeRecords() if basis is None else DeltaRecords(basis, prev_name)


def _ops(ops: Iterable[tuple[Any, ...]]) -> Iterator[bytes]:
    for op in ops:
        if op[0] == rmatch.COPY:
            yield records.copy(op[1], op[2])
        elif op[0] == rmatch.HOLE:
            yield records.hole(op[1])
        else:
            yield records.literal_head(len(op[1]))
            yield op[1]
