"""The documentation parses as reStructuredText without warnings (tables, titles, lists)."""

from __future__ import annotations

import io
from pathlib import Path

import docutils.core
import docutils.utils
import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(ROOT.glob("docs/*.rst")) + [ROOT / "README.rst"]


def test_there_are_docs_to_check() -> None:
    assert len(DOCS) >= 8


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_rst_parses_cleanly(path: Path) -> None:
    messages = io.StringIO()
    try:
        docutils.core.publish_doctree(
            path.read_text(encoding="utf-8"), source_path=str(path),
            settings_overrides={"report_level": 2, "halt_level": 2,
                                "warning_stream": messages})
    except docutils.utils.SystemMessage as exc:
        pytest.fail("%s: %s" % (path.name, exc))
    assert messages.getvalue() == ""
