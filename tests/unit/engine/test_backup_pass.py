"""One backup level: what it counts and warns for files that are skipped or change while read."""

import os

from freezer_rsyncv2 import config as cfgmod
from freezer_rsyncv2 import manifest_writer as mw
from freezer_rsyncv2 import progress as prog
from freezer_rsyncv2.engine import backup_pass, file_reader
from freezer_rsyncv2.stream import compression
from tests.unprivileged import run_unprivileged


def level_zero(tmp_path, read_range=None):
    """The summary of a level 0 of ``tmp_path / "src"``."""
    writer = mw.ManifestWriter(str(tmp_path / "manifest"), compression.by_name("zstd"))
    summary = prog.Summary(level=0)
    bpass = backup_pass.BackupPass(cfgmod.EngineConfig(), str(tmp_path / "src"), [], writer, 0, summary,
                                   read_range=read_range)
    for _ in bpass.records():
        pass
    writer.close()
    return summary


def make_tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "open").write_bytes(b"yes")
    (src / "secret").write_bytes(b"no")
    os.link(src / "secret", src / "secret-link")
    os.chmod(src / "secret", 0)


def test_a_skipped_file_and_its_links_are_not_counted(tmp_path):
    make_tree(tmp_path)

    def run():
        summary = level_zero(tmp_path)
        return summary.entries, summary.files_new, summary.warnings
    entries, files_new, warnings = run_unprivileged(run)
    assert (entries, files_new) == (1, 1)
    assert [(w.path, w.message) for w in warnings] == [
        (b"secret", "skipped, cannot open: Permission denied"),
        (b"secret-link", "skipped, it links to a file that could not be read")]
    assert str(warnings[0]) == "secret: skipped, cannot open: Permission denied"


def test_a_file_that_changes_while_read_is_counted_and_warned_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "moving").write_bytes(b"x" * 5000)

    def growing(fd, offset, length, step, path, warn):
        yield from file_reader.read_range(fd, offset, length, step, path, warn)
        with open(src / "moving", "ab") as f:
            f.write(b"more")
    summary = level_zero(tmp_path, growing)
    assert (summary.entries, summary.files_new, summary.literal_bytes) == (1, 1, 5000)
    assert [str(w) for w in summary.warnings] == [
        "moving: changed while being read; stored what was read, will be read again next time"]
