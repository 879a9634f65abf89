"""Encrypted backups end to end: round trips, pass file errors, tampering, leaks."""

import glob
import json
import os
import random
import threading

import pytest
import xxhash

from freezer_rsyncv2 import cli, errors, treehash
from freezer_rsyncv2.fs import filedata
from freezer_rsyncv2.fs import walk as fswalk
from freezer_rsyncv2.stream import crypto, kdf
from tests.functional import treeutil
from tests.functional.conftest import backup, restore

pytestmark = pytest.mark.usefixtures("cheap_kdf")

NAME = "host_test"
T0 = 1_600_000_000 * 10**9


def rnd(n, seed):
    return random.Random(seed).randbytes(n)


@pytest.fixture
def passfile(tmp_path):
    path = tmp_path / "pass"
    path.write_bytes(b"s3cret passphrase\nignored second line\n")
    return str(path)


def stored(container, kind, level=None):
    """Paths of a stored object kind (data, engine_metadata, metadata)."""
    pattern = "%d_*" % level if level is not None else "*_*"
    root = "metadata" if kind == "metadata" else "data"
    return sorted(glob.glob(os.path.join(container, root, "rsyncv2", NAME,
                                         "*", pattern, kind)))


def read(path):
    with open(path, "rb") as f:
        return f.read()


def three_levels(make_engine, src, passfile):
    """Levels 0..2; big.bin is rewritten at level 2 (spans several frames)."""
    treeutil.write(os.path.join(src, "big.bin"), rnd(3 << 20, 1), T0)
    treeutil.write(os.path.join(src, "d/small.txt"), b"level zero\n", T0)
    assert backup(make_engine(encrypt_key=passfile), src) == 0
    treeutil.write(os.path.join(src, "d/new.txt"), b"level one\n", T0 + 1)
    os.remove(os.path.join(src, "d/small.txt"))
    assert backup(make_engine(encrypt_key=passfile), src) == 1
    level1 = treeutil.snapshot(src)
    treeutil.write(os.path.join(src, "big.bin"), rnd(3 << 20, 2), T0 + 2)
    treeutil.write(os.path.join(src, "d/new.txt"), b"level two\n", T0 + 2)
    assert backup(make_engine(encrypt_key=passfile), src) == 2
    return level1


def no_temp_files(root):
    for _dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            assert not os.fsencode(name).startswith(filedata.TMP_PREFIX), name


def test_three_levels_round_trip(make_engine, src, restore_dir, passfile,
                                 monkeypatch):
    three_levels(make_engine, src, passfile)
    streams = stored(make_engine.container, "data") \
        + stored(make_engine.container, "engine_metadata")
    assert len(streams) == 6
    salts = set()
    for path in streams:
        head = read(path)[:77]
        assert head[12] == crypto.DEFAULT_CIPHER
        salts.add(crypto.StreamParams.decode(head[15:]).salt)
    assert len(salts) == 1          # the chain shares level 0's salt
    for path in stored(make_engine.container, "metadata"):
        assert json.loads(read(path))["encryption"] is True
    # A fresh process would pay the KDF once for the whole chain.
    kdf.clear_cache()
    calls = []
    real = crypto.KdfParams.derive
    monkeypatch.setattr(crypto.KdfParams, "derive",
                        lambda self, p, s: calls.append(s) or real(self, p, s))
    dest = restore_dir()
    assert restore(make_engine(encrypt_key=passfile), dest) == 2
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))
    assert len(calls) == 1


def test_backups_derive_their_key_once_in_the_background(
        make_engine, src, passfile, monkeypatch):
    """Levels 0 and 1 start the KDF as soon as the chain is known, on a
    background thread, and every stream of the level uses that one key."""
    treeutil.write(os.path.join(src, "a.txt"), b"a", T0)
    calls = []
    real = crypto.KdfParams.derive
    monkeypatch.setattr(
        crypto.KdfParams, "derive", lambda self, p, s: calls.append(
            (s, threading.current_thread().name)) or real(self, p, s))
    for level in (0, 1):
        kdf.clear_cache()       # as in a fresh process
        calls.clear()
        treeutil.write(os.path.join(src, "a.txt"), b"a%d" % level,
                       T0 + level)
        assert backup(make_engine(encrypt_key=passfile), src) == level
        assert [name for _salt, name in calls] == ["rsyncv2-kdf"]
        if level == 0:
            salt = calls[0][0]
    assert calls[0][0] == salt          # level 1 reused level 0's salt


def test_level_one_walks_while_the_key_is_derived(
        make_engine, src, passfile, monkeypatch):
    """The derivation only ends once the walk went on: it overlaps it."""
    for i in range(20):
        treeutil.write(os.path.join(src, "f%02d" % i), b"%d" % i, T0)
    assert backup(make_engine(encrypt_key=passfile), src) == 0
    walked = threading.Event()
    real_start, real_derive = fswalk.start, crypto.KdfParams.derive

    def start(*args, **kwargs):
        walker, found = real_start(*args, **kwargs)

        def counted():
            for n, f in enumerate(found):
                if n == 10:
                    walked.set()
                yield f
        return walker, counted()

    def derive(self, passphrase, salt):
        assert walked.wait(10), "the walk waited for the key"
        return real_derive(self, passphrase, salt)

    monkeypatch.setattr(fswalk, "start", start)
    monkeypatch.setattr(crypto.KdfParams, "derive", derive)
    kdf.clear_cache()
    treeutil.write(os.path.join(src, "f05"), b"changed", T0 + 1)
    assert backup(make_engine(encrypt_key=passfile), src) == 1


def test_restore_without_pass_file(make_engine, src, restore_dir, passfile):
    treeutil.write(os.path.join(src, "a.txt"), b"a")
    backup(make_engine(encrypt_key=passfile), src)
    with pytest.raises(errors.ConfigError) as info:
        restore(make_engine(), restore_dir())
    assert "level 0 of host_test" in str(info.value)
    assert "encrypted" in str(info.value)
    assert "--encrypt-pass-file" in str(info.value)


def test_wrong_pass_file_names_the_level(make_engine, src, restore_dir,
                                         passfile, tmp_path):
    treeutil.write(os.path.join(src, "a.txt"), b"a")
    backup(make_engine(encrypt_key=passfile), src)
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"s3cret passphrasE\n")
    dest = restore_dir()
    with pytest.raises(errors.AuthenticationError) as info:
        restore(make_engine(encrypt_key=str(wrong)), dest)
    assert str(info.value).startswith("level 0 of host_test: wrong passphrase")
    assert os.listdir(dest) == []


@pytest.mark.parametrize("bad_pass", ["missing", "empty", "directory"])
def test_bad_pass_file_fails_before_anything_is_stored(make_engine, src,
                                                       tmp_path, bad_pass):
    treeutil.write(os.path.join(src, "a.txt"), b"a")
    path = tmp_path / "pass"
    if bad_pass == "empty":
        path.write_bytes(b"")
    elif bad_pass == "directory":
        path.mkdir()
    engine = make_engine(encrypt_key=str(path))   # the constructor is cheap
    with pytest.raises(errors.ConfigError, match="pass file"):
        backup(engine, src)
    assert stored(make_engine.container, "data") == []


@pytest.mark.parametrize("damage", ["tamper", "truncate"])
def test_damaged_level_names_it_and_leaves_no_half_file(
        make_engine, src, restore_dir, passfile, damage):
    level1 = three_levels(make_engine, src, passfile)
    (path,) = stored(make_engine.container, "data", 2)
    data = read(path)
    middle = len(data) // 2
    if damage == "tamper":
        data = data[:middle] + bytes([data[middle] ^ 0x20]) \
            + data[middle + 1:]
        expected = errors.AuthenticationError
    else:
        data = data[:middle]
        expected = errors.TruncatedError
    with open(path, "wb") as f:
        f.write(data)
    dest = restore_dir()
    with pytest.raises(expected) as info:
        restore(make_engine(encrypt_key=passfile), dest)
    text = str(info.value)
    assert text.startswith("level 2 of host_test: ")
    if damage == "tamper":
        assert "frame " in text and "tampered" in text
        assert "frame 0 " not in text     # big.bin was being written
        assert "wrong passphrase" not in text
    # big.bin keeps its level-1 content; no temporary file is left over.
    got = treeutil.snapshot(dest)
    assert got[b"big.bin"] == level1[b"big.bin"]
    no_temp_files(dest)


def test_storage_reveals_no_names_contents_or_hashes(make_engine, src,
                                                     passfile):
    content = b"CONFIDENTIAL-SNIPPET-0451 " * 2000
    treeutil.write(os.path.join(src, "hidden-dir-name/very-secret-name.txt"),
                   content)
    secrets_ = [b"very-secret-name", b"hidden-dir-name",
                b"CONFIDENTIAL-SNIPPET", treehash.digest_of(content),
                xxhash.xxh3_128_digest(content[:1024])]

    def leaks(container):
        found = set()
        for dirpath, dirs, files in os.walk(container):
            for name in dirs + files:
                blob = os.fsencode(name)
                if name in files:
                    blob += read(os.path.join(dirpath, name))
                found |= {s for s in secrets_ if s in blob}
        return found

    # The check itself works: without encryption everything is visible.
    plain = make_engine(compression="none", rsync_block_size=1024)
    backup(plain, src, name="host_plain")
    assert leaks(make_engine.container) == set(secrets_)

    container = make_engine.container + "-encrypted"
    os.rename(make_engine.container, container)
    for level in range(2):
        if level:
            with open(os.path.join(
                    src, "hidden-dir-name/very-secret-name.txt"), "ab") as f:
                f.write(b"CONFIDENTIAL-SNIPPET-0451 appended")
        backup(make_engine(compression="none", rsync_block_size=1024,
                           encrypt_key=passfile), src)
    assert leaks(make_engine.container) == set()
    for path in stored(make_engine.container, "metadata"):
        meta = json.loads(read(path))
        assert meta["encryption"] is True
        assert "very-secret" not in json.dumps(meta)


def test_cli_round_trip_and_exit_codes(tmp_path, src, passfile, capsys,
                                       clock):
    treeutil.write(os.path.join(src, "a.txt"), b"alpha\n")
    container, dest = str(tmp_path / "store"), str(tmp_path / "dest")
    common = ["--container", container, "--backup-name", "n",
              "--hostname", "h"]
    backup_args = ["backup", "--path-to-backup", src, *common]
    restore_args = ["restore", "--restore-abs-path", dest, *common]
    assert cli.main(backup_args + ["--encrypt-pass-file", passfile]) == 0
    treeutil.write(os.path.join(src, "b.txt"), b"beta\n")
    assert cli.main(backup_args + ["--encrypt-pass-file", passfile]) == 0
    capsys.readouterr()

    assert cli.main(restore_args) == 2                 # no pass file
    err = capsys.readouterr().err
    assert "--encrypt-pass-file" in err and "Traceback" not in err
    assert cli.main(restore_args + ["--overwrite", "--encrypt-pass-file",
                                    str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the pass file" in err and len(err.splitlines()) == 1
    wrong = tmp_path / "wrong"
    wrong.write_bytes(b"not it\n")
    assert cli.main(restore_args + ["--overwrite", "--encrypt-pass-file",
                                    str(wrong)]) == 1
    err = capsys.readouterr().err
    assert "wrong passphrase" in err and len(err.splitlines()) == 1

    assert cli.main(restore_args + ["--overwrite", "--encrypt-pass-file",
                                    passfile]) == 0
    treeutil.assert_same_tree(treeutil.snapshot(src), treeutil.snapshot(dest))


def test_turning_encryption_on_or_off_starts_a_new_chain(make_engine, src,
                                                         restore_dir,
                                                         tmp_path):
    pass_file = tmp_path / "pass"
    pass_file.write_text("sesame\n")
    treeutil.write(os.path.join(src, "f"), b"one")
    assert backup(make_engine(), src) == 0
    assert backup(make_engine(encrypt_key=str(pass_file)), src) == 0
    assert backup(make_engine(encrypt_key=str(pass_file)), src) == 1
    assert backup(make_engine(), src) == 0
    dest = restore_dir()
    restore(make_engine(), dest)
    assert open(os.path.join(dest, "f"), "rb").read() == b"one"
