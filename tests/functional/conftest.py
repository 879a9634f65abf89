import itertools
import os

import pytest

from freezer_rsyncv2.engine import rsyncv2
from freezer_rsyncv2.storage import layout
from freezer_rsyncv2.storage import local


class Clock:
    """A fake clock: every backup gets its own second, later than the last."""

    def __init__(self) -> None:
        self._ticks = itertools.count(1_700_000_000, 100)
        self.last = None

    def __call__(self) -> int:
        self.last = next(self._ticks)
        return self.last


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(layout, "now", c)
    return c


@pytest.fixture
def make_engine(tmp_path, clock):
    container = str(tmp_path / "container")

    def factory(**kwargs):
        kwargs.setdefault("compression", "zstd")
        storage = local.LocalStorage(container,
                                     kwargs.get("max_segment_size") or 1 << 20)
        return rsyncv2.Rsyncv2Engine(storage=storage, **kwargs)

    factory.container = container
    return factory


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src"
    path.mkdir()
    return str(path)


@pytest.fixture
def restore_dir(tmp_path):
    counter = itertools.count()

    def fresh():
        return str(tmp_path / ("restore%d" % next(counter)))
    return fresh


def backup(engine, src, name="host_test", incremental=True, **kw):
    return engine.backup(src, name, incremental, kw.get("max_level"),
                         kw.get("always_level"),
                         kw.get("restart_always_level"))


def restore(engine, dest, name="host_test", date=None, overwrite=False):
    return engine.restore(name, dest, overwrite, date, "fs")


os.environ.setdefault("PYTHONHASHSEED", "0")
