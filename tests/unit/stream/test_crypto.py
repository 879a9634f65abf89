"""Authenticated encryption of streams: round trips, tampering, KDF bounds, pass files."""

import os
import struct

import pytest

from freezer_rsyncv2 import errors
from freezer_rsyncv2.stream import compression, crypto, encoder, frames
from freezer_rsyncv2.stream import kdf as kdfmod

pytestmark = pytest.mark.usefixtures("cheap_kdf")

CIPHERS = sorted(crypto.CIPHER_NAMES)


def small_frames(monkeypatch, size=64):
    monkeypatch.setattr(frames, "FRAME_PLAIN", size)


def encode(blocks, cipher, codec="none", kind=frames.KIND_DATA):
    enc = encoder.StreamEncoder(kind, compression.by_name(codec), cipher)
    out = b""
    for block in blocks:
        out += b"".join(enc.write(block))
    return out + b"".join(enc.close())


def decode(data, factory, kind=frames.KIND_DATA, chunk=None):
    if chunk is None:
        chunks = [data]
    else:
        chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    return b"".join(frames.decode_frames(chunks, kind, factory))


def split(data):
    """(header, [frame bytes...]) of an encoded stream."""
    (ext_len,) = struct.unpack(">H", data[13:15])
    pos = 15 + ext_len
    header, pieces = data[:pos], []
    while pos < len(data):
        (stored,) = struct.unpack(">I", data[pos + 1:pos + 5])
        pieces.append(data[pos:pos + 9 + stored])
        pos += 9 + stored
    return header, pieces


@pytest.fixture
def keys():
    return crypto.Keyring(b"correct horse battery staple")


@pytest.mark.parametrize("cipher_id", CIPHERS)
@pytest.mark.parametrize("codec", compression.NAMES)
def test_round_trip_each_cipher_and_codec(keys, cipher_id, codec,
                                          monkeypatch):
    small_frames(monkeypatch, 4096)
    plain = [os.urandom(5000), b"z" * 20000, b"tail"]
    data = encode(plain, keys.writing_cipher(cipher_id=cipher_id), codec)
    assert data[12] == cipher_id and data[11] == compression.by_name(codec).id
    for chunk in (None, 1, 1000):
        assert decode(data, keys.open_cipher, chunk=chunk) == b"".join(plain)
    # A second keyring from the same passphrase (a restore) opens it too.
    other = crypto.Keyring(b"correct horse battery staple")
    assert decode(data, other.open_cipher) == b"".join(plain)


def test_empty_stream_and_manifest_kind(keys):
    data = encode([], keys.writing_cipher(), kind=frames.KIND_MANIFEST)
    assert decode(data, keys.open_cipher, kind=frames.KIND_MANIFEST) == b""


def test_plaintext_is_not_visible(keys):
    secret = b"top secret file content " * 100
    data = encode([secret], keys.writing_cipher())
    assert b"top secret" not in data


def test_ext_layout_is_the_documented_one(keys):
    data = encode([b"x"], keys.writing_cipher())
    (ext_len,) = struct.unpack(">H", data[13:15])
    ext = data[15:15 + ext_len]
    assert ext_len == 62
    version, kdf, c1, c2, c3 = struct.unpack(">BBIII", ext[:14])
    assert (version, kdf, c1, c2, c3) == (
        crypto.PARAMS_VERSION, crypto.WRITE_KDF.kdf, crypto.WRITE_KDF.cost1,
        crypto.WRITE_KDF.cost2, crypto.WRITE_KDF.cost3)
    params = crypto.StreamParams.decode(ext)
    assert params.encode() == ext
    assert ext[14:30] == params.salt and ext[30:46] == params.stream_nonce
    assert ext[46:62] == params.key_check


def test_streams_share_the_salt_but_not_the_nonce(keys):
    a = encode([b"same"], keys.writing_cipher())
    b = encode([b"same"], keys.writing_cipher())
    pa = crypto.StreamParams.decode(a[15:77])
    pb = crypto.StreamParams.decode(b[15:77])
    assert pa.salt == pb.salt and pa.key_check == pb.key_check
    assert pa.stream_nonce != pb.stream_nonce
    assert split(a)[1][0][9:] != split(b)[1][0][9:]


def test_kdf_runs_once_per_salt(keys, monkeypatch):
    calls = []
    real = crypto.KdfParams.derive

    def counting(self, passphrase, salt):
        calls.append(salt)
        return real(self, passphrase, salt)

    monkeypatch.setattr(crypto.KdfParams, "derive", counting)
    cipher = keys.writing_cipher()
    assert calls == []                 # lazy: nothing derived yet
    streams = [encode([b"%d" % i], cipher if i == 0 else keys.writing_cipher())
               for i in range(3)]
    for data in streams:
        decode(data, crypto.Keyring(b"correct horse battery staple")
               .open_cipher)
    assert len(calls) == 1


def test_wrong_passphrase(keys):
    data = encode([b"hello"], keys.writing_cipher())
    with pytest.raises(errors.AuthenticationError, match="wrong passphrase"):
        decode(data, crypto.Keyring(b"Correct horse battery staple")
               .open_cipher)


def test_encrypted_stream_without_key_asks_for_pass_file(keys):
    data = encode([b"hello"], keys.writing_cipher())
    with pytest.raises(errors.ConfigError, match="--encrypt-pass-file"):
        decode(data, frames.null_cipher_for)


def test_unencrypted_stream_with_key_is_refused(keys):
    data = encode([b"hello"], None)
    with pytest.raises(errors.AuthenticationError, match="not encrypted"):
        decode(data, keys.open_cipher)


@pytest.mark.parametrize("cipher_id", CIPHERS)
def test_every_byte_flip_is_detected(keys, cipher_id, monkeypatch):
    small_frames(monkeypatch, 40)
    data = encode([b"hello world, " * 8], keys.writing_cipher(
        cipher_id=cipher_id), "gzip")
    header, pieces = split(data)
    assert len(pieces) >= 3
    for i in range(len(data)):
        for mask in (0x01, 0x40, 0x80):
            bad = bytearray(data)
            bad[i] ^= mask
            with pytest.raises(errors.Rsyncv2Error):
                decode(bytes(bad), keys.open_cipher)


def test_tampered_body_names_frame_and_offset(keys, monkeypatch):
    small_frames(monkeypatch)
    data = encode([os.urandom(300)], keys.writing_cipher())
    header, pieces = split(data)
    where = len(header) + len(pieces[0]) + len(pieces[1]) + 20
    bad = bytearray(data)
    bad[where] ^= 1
    with pytest.raises(errors.AuthenticationError) as info:
        decode(bytes(bad), keys.open_cipher)
    text = str(info.value)
    assert "frame 2 at byte %d" % (where - 20) in text
    assert "tampered" in text and "wrong passphrase" not in text


def frame_stream(keys, monkeypatch):
    small_frames(monkeypatch)
    data = encode([os.urandom(64 * 4 + 10)], keys.writing_cipher())
    header, pieces = split(data)
    assert len(pieces) == 5
    return header, pieces


@pytest.mark.parametrize("edit", ["drop_first", "drop_middle", "duplicate",
                                  "swap", "replace_final"])
def test_frame_level_edits_are_detected(keys, monkeypatch, edit):
    header, p = frame_stream(keys, monkeypatch)
    edited = {"drop_first": p[1:],
              "drop_middle": p[:2] + p[3:],
              "duplicate": p[:2] + [p[1]] + p[2:],
              "swap": [p[0], p[2], p[1]] + p[3:],
              "replace_final": p[:3] + [p[4]]}[edit]
    with pytest.raises(errors.AuthenticationError):
        decode(header + b"".join(edited), keys.open_cipher)


def test_final_frame_dropped_or_cut(keys, monkeypatch):
    header, p = frame_stream(keys, monkeypatch)
    with pytest.raises(errors.TruncatedError):
        decode(header + b"".join(p[:-1]), keys.open_cipher)
    whole = header + b"".join(p)
    for cut in range(len(header), len(whole)):
        with pytest.raises(errors.TruncatedError):
            decode(whole[:cut], keys.open_cipher)


def test_final_flag_cleared_on_last_frame(keys, monkeypatch):
    header, p = frame_stream(keys, monkeypatch)
    last = bytearray(p[-1])
    last[0] = 0
    with pytest.raises(errors.AuthenticationError):
        decode(header + b"".join(p[:-1]) + bytes(last), keys.open_cipher)


def test_header_of_another_stream_spliced_in(keys, monkeypatch):
    header, p = frame_stream(keys, monkeypatch)
    other = encode([b"other"], keys.writing_cipher())
    other_header, _ = split(other)
    assert other_header != header and len(other_header) == len(header)
    with pytest.raises(errors.AuthenticationError, match="tampered"):
        decode(other_header + b"".join(p), keys.open_cipher)
    # The same stream relabelled as a manifest fails too.
    relabelled = bytearray(header)
    relabelled[10] = frames.KIND_MANIFEST
    with pytest.raises(errors.AuthenticationError):
        decode(bytes(relabelled) + b"".join(p), keys.open_cipher,
               kind=frames.KIND_MANIFEST)


def test_cipher_id_swapped_in_header(keys, monkeypatch):
    header, p = frame_stream(keys, monkeypatch)
    swapped = bytearray(header)
    swapped[12] = crypto.CIPHER_CHACHA20_POLY1305
    with pytest.raises(errors.AuthenticationError):
        decode(bytes(swapped) + b"".join(p), keys.open_cipher)
    swapped[12] = 9
    with pytest.raises(errors.UnsupportedVersionError, match="cipher id 9"):
        decode(bytes(swapped) + b"".join(p), keys.open_cipher)


def ext_with(keys, **changes):
    data = encode([b"x"], keys.writing_cipher())
    params = crypto.StreamParams.decode(data[15:77])
    values = dict(version=crypto.PARAMS_VERSION, kdf=params.kdf.kdf,
                  c1=params.kdf.cost1, c2=params.kdf.cost2,
                  c3=params.kdf.cost3)
    values.update(changes)
    return struct.pack(">BBIII", values["version"], values["kdf"],
                       values["c1"], values["c2"], values["c3"]) \
        + params.salt + params.stream_nonce + params.key_check


@pytest.mark.parametrize("changes", [
    dict(kdf=kdfmod.KDF_ARGON2ID, c1=100 << 20, c2=3, c3=4),  # 100 GiB
    dict(kdf=kdfmod.KDF_ARGON2ID, c1=(1 << 20) + 1, c2=1, c3=1),
    dict(kdf=kdfmod.KDF_ARGON2ID, c1=65536, c2=1_000_000, c3=1),
    dict(kdf=kdfmod.KDF_ARGON2ID, c1=65536, c2=0, c3=1),
    dict(kdf=kdfmod.KDF_ARGON2ID, c1=65536, c2=3, c3=0),
    dict(kdf=kdfmod.KDF_ARGON2ID, c1=65536, c2=3, c3=4096),
    dict(kdf=kdfmod.KDF_ARGON2ID, c1=8, c2=1, c3=2),
    dict(kdf=kdfmod.KDF_SCRYPT, c1=40, c2=8, c3=1),
    dict(kdf=kdfmod.KDF_SCRYPT, c1=20, c2=32, c3=1),
    dict(kdf=kdfmod.KDF_SCRYPT, c1=14, c2=8, c3=10_000),
    dict(kdf=kdfmod.KDF_SCRYPT, c1=0, c2=8, c3=1),
    dict(kdf=kdfmod.KDF_SCRYPT, c1=0xFFFFFFFF, c2=0xFFFFFFFF, c3=1),
])
def test_hostile_kdf_params_are_refused_before_deriving(
        keys, monkeypatch, changes):
    ext = ext_with(keys, **changes)

    def never(*_args):
        raise AssertionError("the KDF ran on hostile parameters")

    monkeypatch.setattr(crypto.KdfParams, "derive", never)
    with pytest.raises(errors.CorruptRecordError, match="out of bounds"):
        keys.open_cipher(crypto.CIPHER_AES_256_GCM, ext)


def test_unknown_params_version_kdf_and_bad_lengths(keys):
    with pytest.raises(errors.UnsupportedVersionError, match="version 2"):
        keys.open_cipher(1, ext_with(keys, version=2))
    with pytest.raises(errors.UnsupportedVersionError, match="KDF id 7"):
        keys.open_cipher(1, ext_with(keys, kdf=7))
    good = ext_with(keys)
    for bad in (b"", good[:-1], good + b"\0"):
        with pytest.raises(errors.CorruptRecordError):
            keys.open_cipher(1, bad)
    with pytest.raises(errors.UnsupportedVersionError):
        keys.open_cipher(200, good)


def test_scrypt_streams_round_trip(keys, monkeypatch):
    monkeypatch.setattr(crypto, "WRITE_KDF",
                        crypto.KdfParams(kdfmod.KDF_SCRYPT, 4, 1, 1))
    data = encode([b"scrypt data"], keys.writing_cipher())
    assert data[16] == kdfmod.KDF_SCRYPT
    assert decode(data, crypto.Keyring(b"correct horse battery staple")
                  .open_cipher) == b"scrypt data"


def test_production_kdf_parameters_are_strong():
    argon, scrypt = kdfmod.ARGON2ID_DEFAULT, kdfmod.SCRYPT_DEFAULT
    assert argon.kdf == kdfmod.KDF_ARGON2ID
    assert argon.memory_bytes() >= 64 << 20 and argon.cost2 >= 3
    assert scrypt.kdf == kdfmod.KDF_SCRYPT
    assert scrypt.cost1 >= 17 and scrypt.memory_bytes() >= 128 << 20
    for params in (argon, scrypt):
        params.check()            # readable within the reader's bounds
    expected = argon if kdfmod.Argon2id is not None else scrypt
    assert kdfmod.default_write_kdf() == expected


def write_manifest(path, cipher):
    with open(path, "wb") as out:
        out.write(encode([b"records"], cipher, kind=frames.KIND_MANIFEST))


def salt_of(data):
    return crypto.StreamParams.decode(split(data)[0][15:]).salt


def test_writer_reuses_the_salt_of_its_chain(tmp_path, keys, monkeypatch):
    level0 = str(tmp_path / "m0")
    write_manifest(level0, keys.writing_cipher())
    with open(level0, "rb") as f:
        chain_salt = salt_of(f.read())
    later = crypto.Keyring(b"correct horse battery staple")
    assert salt_of(encode([b"l1"], later.writing_cipher([level0]))) \
        == chain_salt
    # Not for another passphrase, other KDF costs or an unreadable file.
    stranger = crypto.Keyring(b"another passphrase")
    assert salt_of(encode([b"l1"], stranger.writing_cipher([level0]))) \
        != chain_salt
    assert salt_of(encode([b"l1"], later.writing_cipher(
        [str(tmp_path / "missing")]))) != chain_salt
    monkeypatch.setattr(crypto, "WRITE_KDF", crypto.KdfParams(
        crypto.WRITE_KDF.kdf, crypto.WRITE_KDF.cost1 * 2,
        crypto.WRITE_KDF.cost2, crypto.WRITE_KDF.cost3))
    assert salt_of(encode([b"l1"], later.writing_cipher([level0]))) \
        != chain_salt


@pytest.mark.parametrize("content, expected", [
    (b"secret\n", b"secret"), (b"secret", b"secret"),
    (b"secret\r\nsecond line\n", b"secret"), (b" spaced pass \n", b" spaced pass "),
])
def test_pass_file_first_line(tmp_path, content, expected):
    path = tmp_path / "pass"
    path.write_bytes(content)
    assert crypto.read_passphrase(str(path)) == expected


@pytest.mark.parametrize("content", [None, b"", b"\n", b"\nsecond line\n",
                                     b"x" * (crypto.MAX_PASSPHRASE + 1)])
def test_bad_pass_files_are_config_errors(tmp_path, content):
    path = tmp_path / "pass"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(errors.ConfigError, match="pass file"):
        crypto.Keyring.from_pass_file(str(path))
    with pytest.raises(errors.ConfigError, match="pass file"):
        crypto.read_passphrase(str(tmp_path))      # a directory


def test_module_level_helpers_round_trip(tmp_path):
    path = tmp_path / "pass"
    path.write_bytes(b"helper pass\n")
    keyring = crypto.Keyring.from_pass_file(str(path))
    data = encode([b"via helpers"], keyring.writing_cipher())
    assert decode(data, crypto.Keyring.from_pass_file(str(path)).open_cipher) == b"via helpers"
