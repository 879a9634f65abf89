"""freezer-rsyncv2 ls and diff (and list --json): the tree at a date and its changes, from manifests only."""

import base64
import json
import os
import pwd
import time

import pytest

from freezer_rsyncv2 import cli
from freezer_rsyncv2 import inventory
from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.storage import local
from tests import s3server
from tests.functional import treeutil

ODD = b"caf\xe9\x1b[31m"            # not UTF-8, with an escape sequence
ODD_SHOWN = "caf\\xe9\\x1b[31m"
NEW_ODD = b"new\xff"


def run(*argv):
    return cli.main([str(a) for a in argv])


def when(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))


@pytest.fixture
def chain(tmp_path, clock, capsys):
    """Three levels: renames, deletions, type changes and names that are not UTF-8.

    Returns the container, the source and each level's date.
    """
    src = str(tmp_path / "src")
    raw = os.fsencode(src)
    treeutil.write(os.path.join(src, "a.txt"), b"alpha\n")
    treeutil.write(os.path.join(src, "d/b.bin"), os.urandom(200000))
    treeutil.write(os.path.join(src, "d.txt"), b"not below d")
    treeutil.write(os.path.join(src, "f2"), b"a file, then a directory")
    treeutil.write(os.path.join(src, "s"), b"a file, then a symlink")
    treeutil.write(os.path.join(src, "gone.txt"), b"deleted at level 1")
    treeutil.write(os.path.join(src, "keep.txt"), b"mode changes")
    with open(os.path.join(raw, ODD), "wb") as f:
        f.write(b"odd")
    container = str(tmp_path / "store")
    args = ("backup", "--path-to-backup", src, "--container", container, "--backup-name", "n", "--hostname", "h")
    dates = []
    assert run(*args) == 0
    dates.append(when(clock.last))
    # Level 1.
    os.rename(os.path.join(src, "d/b.bin"), os.path.join(src, "d/moved.bin"))
    os.remove(os.path.join(src, "gone.txt"))
    os.remove(os.path.join(src, "f2"))
    treeutil.write(os.path.join(src, "f2/inner"), b"inside")
    os.remove(os.path.join(src, "s"))
    os.symlink("a.txt", os.path.join(src, "s"))
    os.chmod(os.path.join(src, "keep.txt"), 0o600)
    treeutil.write(os.path.join(src, "a.txt"), b"alpha, rewritten\n")
    with open(os.path.join(raw, NEW_ODD), "wb") as f:
        f.write(b"new odd")
    assert run(*args) == 0
    dates.append(when(clock.last))
    # Level 2.
    os.remove(os.path.join(raw, ODD))
    assert run(*args) == 0
    dates.append(when(clock.last))
    capsys.readouterr()
    return {"container": container, "src": src, "dates": dates, "tmp": tmp_path}


def common(chain, *extra):
    return ("--container", chain["container"], "--backup-name", "n", "--hostname", "h", *extra)


def lines(capsys):
    return capsys.readouterr().out.splitlines()


LEVEL0 = ["a.txt", ODD_SHOWN, "d", "d/b.bin", "d.txt", "f2", "gone.txt", "keep.txt", "s"]
LEVEL1 = ["a.txt", ODD_SHOWN, "d", "d/moved.bin", "d.txt", "f2", "f2/inner", "keep.txt", "new\\xff", "s"]


def test_ls_at_each_level(chain, capsys):
    for date, expected in zip(chain["dates"], (LEVEL0, LEVEL1)):
        assert run("ls", *common(chain, "--restore-from-date", date)) == 0
        assert lines(capsys) == expected
    assert run("ls", *common(chain)) == 0
    assert lines(capsys) == [p for p in LEVEL1 if p != ODD_SHOWN]


def test_ls_long(chain, capsys):
    os.chmod(os.path.join(chain["src"], "a.txt"), 0o644)
    assert run("ls", *common(chain, "--long")) == 0
    by_path = {line.split("  ")[-1].split(" -> ")[0]: line for line in lines(capsys)}
    s = by_path["s"]
    assert s.startswith("lrwxrwxrwx") and s.endswith("  s -> a.txt")
    assert by_path["keep.txt"].startswith("-rw-------")
    assert by_path["f2"].startswith("d")
    a = by_path["a.txt"].split()
    st = os.lstat(os.path.join(chain["src"], "a.txt"))
    assert a[2] == str(st.st_size) == str(len(b"alpha, rewritten\n"))
    assert a[3] == when(st.st_mtime)[:19] + "Z"
    assert a[1].split("/")[0] in (str(st.st_uid), pwd.getpwuid(st.st_uid).pw_name)


def test_ls_paths(chain, capsys):
    assert run("ls", *common(chain, "d", "./f2/")) == 0
    assert lines(capsys) == ["d", "d/moved.bin", "f2", "f2/inner"]
    assert run("ls", *common(chain, "f2/inner", "nothing")) == 0
    assert lines(capsys) == ["f2/inner"]
    assert run("ls", *common(chain, ".")) == 0
    assert len(lines(capsys)) == len(LEVEL1) - 1


def test_diff(chain, capsys):
    d0, d1, d2 = chain["dates"]
    assert run("diff", *common(chain, "--from-date", d0, "--to-date", d1)) == 0
    assert lines(capsys) == ["M  a.txt", "U  d", "-  d/b.bin", "+  d/moved.bin", "T  f2", "+  f2/inner",
                             "-  gone.txt", "U  keep.txt", "+  new\\xff", "T  s"]
    assert run("diff", *common(chain, "--from-date", d1)) == 0        # to the newest
    assert lines(capsys) == [f"-  {ODD_SHOWN}"]
    assert run("diff", *common(chain, "--from-date", d2, "--to-date", d0)) == 0
    backwards = lines(capsys)
    assert "+  gone.txt" in backwards and f"+  {ODD_SHOWN}" in backwards and "-  f2/inner" in backwards
    assert run("diff", *common(chain, "--from-date", d2)) == 0
    assert lines(capsys) == []


def test_diff_across_chains(chain, capsys):
    os.remove(os.path.join(chain["src"], "a.txt"))
    assert run("backup", "--path-to-backup", chain["src"], "--no-incremental", *common(chain)) == 0
    capsys.readouterr()
    assert run("list", *common(chain, "--json")) == 0
    chains = json.loads(capsys.readouterr().out)["backups"][0]["chains"]
    assert [len(c["levels"]) for c in chains] == [3, 1]
    assert run("diff", *common(chain, "--from-date", chain["dates"][2])) == 0
    assert lines(capsys) == ["-  a.txt"]


def test_json(chain, capsys):
    assert run("ls", *common(chain, "--json", "--restore-from-date", chain["dates"][1])) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backup"] == "h_n" and doc["level"] == 1
    entries = {e.get("path_base64") or e["path"]: e for e in doc["entries"]}
    odd = entries[base64.b64encode(ODD).decode()]
    assert odd["path"] == ODD_SHOWN and odd["type"] == "file" and odd["size"] == 3
    assert "path_base64" not in entries["a.txt"]
    assert entries["s"]["type"] == "symlink" and entries["s"]["link_target"] == "a.txt"
    assert entries["f2"]["type"] == "dir" and entries["keep.txt"]["mode"] == 0o600
    st = os.lstat(os.path.join(chain["src"], "d/moved.bin"))
    moved = entries["d/moved.bin"]
    assert (moved["size"], moved["mtime_ns"], moved["uid"]) == (200000, st.st_mtime_ns, st.st_uid)

    assert run("diff", *common(chain, "--json", "--from-date", chain["dates"][0],
                               "--to-date", chain["dates"][1])) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["from"]["level"] == 0 and doc["to"]["level"] == 1
    changes = {c["path"]: c for c in doc["changes"]}
    assert changes["s"] == {"change": "T", "path": "s", "old_type": "file", "new_type": "symlink"}
    assert changes["gone.txt"]["change"] == "-" and changes["gone.txt"]["new_type"] is None
    assert base64.b64decode(changes["new\\xff"]["path_base64"]) == NEW_ODD

    assert run("list", *common(chain, "--json")) == 0
    doc = json.loads(capsys.readouterr().out)
    levels = doc["backups"][0]["chains"][0]["levels"]
    assert [lv["level"] for lv in levels] == [0, 1, 2]
    assert all(lv["size"] > 0 and lv["date"].endswith("Z") for lv in levels)


def _data_objects(container):
    return [os.path.join(d, f) for d, _dirs, files in os.walk(container) for f in files if f == "data"]


def test_reads_no_data(chain, capsys):
    objects = _data_objects(chain["container"])
    assert len(objects) == 3
    for path in objects:
        os.remove(path)
    assert run("ls", *common(chain)) == 0
    assert lines(capsys) == [p for p in LEVEL1 if p != ODD_SHOWN]
    assert run("diff", *common(chain, "--from-date", chain["dates"][0])) == 0
    assert "T  s" in lines(capsys)
    dest = str(chain["tmp"] / "restored")
    assert run("restore", *common(chain, "--restore-abs-path", dest)) == 1     # the data was needed


def test_library_api(chain):
    engine = rsyncv2.Rsyncv2Engine(storage=local.LocalStorage(chain["container"], 1 << 20))
    with inventory.tree_at(engine, "h_n") as new:
        assert new.top.level == 2
        with inventory.tree_at(engine, "h_n", new.levels[0].timestamp) as old:
            assert len(old.levels) == 1
            changes = {c.path: c.letter for c in inventory.diff(old.entries(), new.entries())}
        paths = [me.entry.path for me in inventory.select(new.entries(), [b"f2"])]
    assert changes[b"f2"] == inventory.TYPE_CHANGED and changes[ODD] == inventory.REMOVED
    assert paths == [b"f2", b"f2/inner"]


@pytest.mark.usefixtures("cheap_kdf")
def test_encrypted(tmp_path, clock, capsys):
    src = str(tmp_path / "src")
    treeutil.write(os.path.join(src, "x"), b"secret")
    passfile = str(tmp_path / "pass")
    with open(passfile, "w") as f:
        f.write("correct horse\n")
    where = ("--container", str(tmp_path / "store"), "--backup-name", "n", "--hostname", "h")
    assert run("backup", "--path-to-backup", src, "--encrypt-pass-file", passfile, *where) == 0
    first = when(clock.last)
    treeutil.write(os.path.join(src, "y"), b"more")
    assert run("backup", "--path-to-backup", src, "--encrypt-pass-file", passfile, *where) == 0
    capsys.readouterr()
    assert run("ls", "--encrypt-pass-file", passfile, *where) == 0
    assert lines(capsys) == ["x", "y"]
    assert run("diff", "--encrypt-pass-file", passfile, "--from-date", first, *where) == 0
    assert lines(capsys) == ["+  y"]
    assert run("ls", *where) == 2        # the pass file is missing: a usage error, as for restore
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--encrypt-pass-file" in err


def test_errors(chain, capsys):
    assert run("ls", "--container", chain["container"], "--backup-name", "other", "--hostname", "h") == 1
    assert run("diff", *common(chain, "--from-date", "2001-01-01T00:00:00")) == 1
    assert run("ls", *common(chain, "--restore-from-date", "2001-01-01T00:00:00")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("freezer-rsyncv2: error:") for line in err)


@pytest.mark.parametrize("argv", [
    ["diff", "--container", "c", "--backup-name", "n"],
    ["diff", "--container", "c", "--backup-name", "n", "--from-date", "yesterday"],
    ["ls", "--container", "c"],
    ["ls", "--container", "c", "--backup-name", "n", "--restore-from-date", "soon"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_json_logs_go_to_stderr(chain, capsys):
    chains = os.path.join(chain["container"], "metadata", "rsyncv2", "h_n")
    os.mkdir(os.path.join(chains, os.listdir(chains)[0], "junk"))     # warned about, then ignored
    for argv in (("ls", "--json"), ("diff", "--json", "--from-date", chain["dates"][0]), ("list", "--json")):
        assert run(argv[0], *common(chain, *argv[1:])) == 0
        out, err = capsys.readouterr()
        assert json.loads(out) and "not a level directory" in err


def test_long_hardlink(tmp_path, clock, capsys):
    src = str(tmp_path / "src")
    treeutil.write(os.path.join(src, "a"), b"shared")
    os.link(os.path.join(src, "a"), os.path.join(src, "b"))
    where = ("--container", str(tmp_path / "store"), "--backup-name", "n", "--hostname", "h")
    assert run("backup", "--path-to-backup", src, *where) == 0
    capsys.readouterr()
    assert run("ls", "--long", *where) == 0
    a, b = lines(capsys)
    assert a.startswith("-") and a.endswith("  a")
    assert b.startswith("-") and b.endswith("  b link to a")
    assert run("ls", "--json", *where) == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert [(e["type"], e["hardlink_to"]) for e in entries] == [("file", None), ("hardlink", "a")]


def test_on_s3_without_data_objects(s3_server, tmp_path, clock, capsys, monkeypatch):
    src = str(tmp_path / "src")
    treeutil.write(os.path.join(src, "a"), b"one")
    bucket = s3server.unique_bucket("ls")
    for variable, value in (("AWS_ENDPOINT_URL", s3_server.endpoint), ("AWS_ACCESS_KEY_ID", s3_server.access_key),
                            ("AWS_SECRET_ACCESS_KEY", s3_server.secret_key),
                            ("AWS_DEFAULT_REGION", s3_server.region)):
        monkeypatch.setenv(variable, value)
    where = ("--storage", "s3", "--container", f"{bucket}/nightly", "--backup-name", "n", "--hostname", "h")
    assert run("backup", "--path-to-backup", src, *where) == 0
    first = when(clock.last)
    os.remove(os.path.join(src, "a"))
    os.symlink("elsewhere", os.path.join(src, "a"))
    assert run("backup", "--path-to-backup", src, *where) == 0
    client = s3_server.client()
    data = [key for key in s3server.object_keys(client, bucket) if key.rpartition("/")[2] == "data"]
    assert len(data) == 2
    for key in data:
        client.delete_object(Bucket=bucket, Key=key)
    capsys.readouterr()
    assert run("ls", "--long", *where) == 0
    assert lines(capsys)[0].endswith("  a -> elsewhere")
    assert run("diff", "--from-date", first, *where) == 0
    assert lines(capsys) == ["T  a"]
