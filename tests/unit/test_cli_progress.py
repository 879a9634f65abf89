import io

from freezer_rsyncv2 import cli_output


def test_tty_progress_draws_a_status_line():
    out = io.StringIO()
    p = cli_output.TtyProgress(out)
    p.phase("backup level 0")
    p.advance(5 << 20)
    p.entry(b"a", "new")
    p._last = 0.0
    p.advance(1 << 20)
    p.close()
    text = out.getvalue()
    assert "backup level 0" in text and "6.0 MiB" in text
    assert text.endswith("\n") and "\r" in text


def test_sizes_are_human_readable():
    assert cli_output.human_size(512) == "512 B"
    assert cli_output.human_size(1536) == "1.5 KiB"
    assert cli_output.human_size(3 << 30) == "3.0 GiB"
