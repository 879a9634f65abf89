"""Crafts level streams in our format with arbitrary records, and restores them.

The real encoder is used (records.pack + encoder.StreamEncoder), with none of
the checks a backup makes, so tests can feed restore exactly what an
attacker could store.
"""

from __future__ import annotations

import hashlib
import json
import os
import types

from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.stream import compression, encoder, frames, records

DIGEST_ZERO = hashlib.sha256(b"").digest()


def entry_map(path: bytes, kind: str = "f", **fields) -> dict:
    m = {"p": path, "k": kind, "m": 0o644, "u": os.getuid(),
         "g": os.getgid(), "s": 0, "mt": 10**18, "at": 10**18}
    m.update(fields)
    return m


def entry(path: bytes, kind: str = "f", **fields) -> list:
    return [records.ENTRY, entry_map(path, kind, **fields)]


def file_records(path: bytes, data: bytes, **fields) -> list[list]:
    """A complete, honest file: ENTRY, LITERAL, END_FILE."""
    out = [entry(path, "f", s=len(data), data="full", **fields)]
    if data:
        out.append([records.LITERAL, data])
    out.append([records.END_FILE, len(data), hashlib.sha256(data).digest()])
    return out


def encode(recs: list, begin: bool = True, end: bool = True,
           codec: str = "none", level: int = 0, **begin_fields) -> bytes:
    """A level's stream; BEGIN names no digest (SHA-256) unless ``dg=``."""
    fields = {"level": level, **begin_fields}
    body = [records.pack([records.BEGIN, fields])] if begin else []
    body += [r if isinstance(r, bytes) else records.pack(r) for r in recs]
    if end:
        body.append(records.pack([records.END, {}]))
    enc = encoder.StreamEncoder(frames.KIND_DATA, compression.by_name(codec))
    out = b""
    for piece in body:
        out += b"".join(enc.write(piece))
    return out + b"".join(enc.close())


class FakePipe:
    """What restore_level reads: recv_bytes() until EOFError."""

    def __init__(self, data: bytes, chunk: int = 65536) -> None:
        self._chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]

    def recv_bytes(self) -> bytes:
        if not self._chunks:
            raise EOFError
        return self._chunks.pop(0)


def replace_level(data_path: str, metadata_path: str, level: bytes) -> None:
    """Store ``level`` as a level's data object and declare its size in the level's metadata
    (where the storage bounds what it reads)."""
    with open(data_path, "wb") as f:
        f.write(level)
    with open(metadata_path) as f:
        info = json.load(f)
    summary = info.get("summary")
    if isinstance(summary, dict) and "stored_bytes" in summary:
        summary["stored_bytes"] = len(level)
        with open(metadata_path, "w") as f:
            json.dump(info, f)


def restore_stream(dest: str, data: bytes, level: int = 0,
                   chunk: int = 65536) -> None:
    """Apply one crafted level to dest the way the engine restores a level."""
    engine = rsyncv2.Rsyncv2Engine()
    backup = types.SimpleNamespace(level=level, hostname_backup_name="crafted")
    engine.restore_level(dest, FakePipe(data, chunk), backup)


def tree_state(root: str) -> dict:
    """Everything below root, symlinks not followed: path -> (mode, content)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            content = None
            if os.path.islink(p):
                content = os.readlink(p)
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    content = f.read()
            state[os.path.relpath(p, root)] = (st.st_mode, st.st_mtime_ns,
                                               content)
    return state
