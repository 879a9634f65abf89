"""The freezer-agent import hook, against a fake ``freezer`` package (Freezer itself not needed)."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from oslo_config import cfg

import freezer_rsyncv2
from freezer_rsyncv2 import freezer_hook
from freezer_rsyncv2.engine.rsyncv2 import Rsyncv2Engine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PTH = os.path.join(REPO, "freezer_rsyncv2_hook.pth")

FAKE_FILES = {
    "freezer/__init__.py": "",
    "freezer/engine/__init__.py": "",
    "freezer/engine/rsyncv2/__init__.py": "PACKAGE = 'freezer'\n",
    "freezer/engine/rsyncv2/rsyncv2.py":
        "class Rsyncv2Engine:\n    ORIGIN = 'freezer'\n",
    "freezer/engine/rsyncv2/pyrsync.py": "ORIGIN = 'freezer'\n",
    "freezer/engine/tar/__init__.py": "",
    "freezer/engine/tar/tar.py": "class TarEngine:\n    ORIGIN = 'freezer'\n",
    "freezer/storage/__init__.py": "",
    # As Freezer's: a new client for every request.
    "freezer/storage/s3.py": textwrap.dedent("""\
        ORIGIN = 'freezer'


        class S3Storage:
            def get_s3_connection(self):
                return object()
        """),
}


def _forget_freezer() -> None:
    for name in list(sys.modules):
        if name == "freezer" or name.startswith("freezer."):
            del sys.modules[name]


@pytest.fixture
def fake_freezer(tmp_path, monkeypatch):
    """A tiny ``freezer`` package first on sys.path; no finder installed."""
    for rel, text in FAKE_FILES.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.delenv(freezer_hook.DISABLE_ENV, raising=False)
    freezer_hook.uninstall()
    _forget_freezer()
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    freezer_hook.uninstall()
    _forget_freezer()
    importlib.invalidate_caches()


def test_target_is_ours_after_install(fake_freezer):
    assert freezer_hook.install() is True
    assert isinstance(sys.meta_path[0], freezer_hook.EngineFinder)
    module = importlib.import_module(freezer_hook.TARGET)
    assert issubclass(module.Rsyncv2Engine, Rsyncv2Engine)
    assert module.__name__ == freezer_hook.TARGET
    assert module.__file__.endswith(os.path.join("freezer_rsyncv2",
                                                 "freezer_engine.py"))
    assert module.IMPLEMENTATION == "freezer_rsyncv2"
    assert module.VERSION == freezer_rsyncv2.__version__
    # The way Freezer's importutils.import_class reaches the class.
    __import__(freezer_hook.TARGET)
    assert getattr(sys.modules[freezer_hook.TARGET],
                   "Rsyncv2Engine") is module.Rsyncv2Engine


def test_engine_built_with_agent_keywords(fake_freezer, tmp_path):
    freezer_hook.install()
    module = importlib.import_module(freezer_hook.TARGET)
    pass_file = tmp_path / "pass"
    pass_file.write_text("x")
    engine = module.Rsyncv2Engine(
        compression="xz", symlinks=None, exclude="*.log", storage=None,
        max_segment_size=33554432, rsync_block_size=4096, encrypt_key=None,
        temp_resource_prefix="freezer_", dry_run=False)
    assert engine.name == "rsyncv2"
    assert engine.metadata()["compression"] == "xz"


def _agent_conf(args: list[str]):
    conf = cfg.ConfigOpts()
    conf.register_cli_opts([cfg.IntOpt("rsync-block-size", default=4096,
                                       dest="rsync_block_size")])
    conf(args=args)
    return conf


def test_block_size_left_at_freezers_default_means_automatic(monkeypatch):
    from freezer_rsyncv2 import freezer_engine
    assert freezer_engine.left_at_default("rsync_block_size",
                                          _agent_conf([])) is True
    given = _agent_conf(["--rsync-block-size", "4096"])
    assert freezer_engine.left_at_default("rsync_block_size", given) is False
    assert freezer_engine.left_at_default("no_such_option", given) is False
    assert freezer_engine.left_at_default("rsync_block_size", object()) is False

    monkeypatch.setattr(freezer_engine, "left_at_default", lambda name: True)
    engine = freezer_engine.Rsyncv2Engine(storage=None, rsync_block_size=4096)
    assert engine.config.block_size is None
    monkeypatch.setattr(freezer_engine, "left_at_default", lambda name: False)
    engine = freezer_engine.Rsyncv2Engine(storage=None, rsync_block_size=4096)
    assert engine.config.block_size == 4096


def test_everything_else_is_untouched(fake_freezer):
    freezer_hook.install()
    package = importlib.import_module("freezer.engine.rsyncv2")
    assert package.PACKAGE == "freezer"
    assert package.__file__.startswith(str(fake_freezer))
    assert importlib.import_module(
        "freezer.engine.rsyncv2.pyrsync").ORIGIN == "freezer"
    assert importlib.import_module(
        "freezer.engine.tar.tar").TarEngine.ORIGIN == "freezer"
    finder = freezer_hook.installed_finder()
    assert finder is not None
    for name in ("freezer", "freezer.engine", "freezer.engine.rsyncv2",
                 "freezer.engine.rsync.rsync", "freezer_rsyncv2.freezer_engine",
                 "freezer.engine.rsyncv2.rsyncv2.extra", "json"):
        assert finder.find_spec(name, None) is None, name


def test_opt_out_at_start_up(fake_freezer, monkeypatch):
    monkeypatch.setenv(freezer_hook.DISABLE_ENV, "1")
    assert freezer_hook.install() is False
    assert freezer_hook.installed_finder() is None
    module = importlib.import_module(freezer_hook.TARGET)
    assert module.Rsyncv2Engine.ORIGIN == "freezer"


def test_opt_out_after_start_up(fake_freezer, monkeypatch):
    freezer_hook.install()
    monkeypatch.setenv(freezer_hook.DISABLE_ENV, "yes")
    module = importlib.import_module(freezer_hook.TARGET)
    assert module.Rsyncv2Engine.ORIGIN == "freezer"


@pytest.mark.parametrize("value,expected", [
    ("1", True), ("true", True), ("YES", True), (" on ", True),
    ("0", False), ("", False), ("no", False), ("false", False)])
def test_disabled_values(value, expected):
    assert freezer_hook.disabled({freezer_hook.DISABLE_ENV: value}) is expected
    assert freezer_hook.disabled({}) is False


def test_install_is_idempotent(fake_freezer):
    assert freezer_hook.install() is True
    assert freezer_hook.install() is True
    assert sum(isinstance(f, freezer_hook.EngineFinder)
               for f in sys.meta_path) == 1
    freezer_hook.uninstall()
    assert freezer_hook.installed_finder() is None


def test_missing_replacement_falls_back_to_freezer(fake_freezer):
    sys.meta_path.insert(0, freezer_hook.EngineFinder(
        replacement="freezer_rsyncv2.no_such_module"))
    module = importlib.import_module(freezer_hook.TARGET)
    assert module.Rsyncv2Engine.ORIGIN == "freezer"


class _NoFreezer:
    """A meta path finder for which no ``freezer`` package is installed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "freezer" or fullname.startswith("freezer."):
            raise ModuleNotFoundError("No module named %r" % fullname,
                                      name=fullname)
        return None


def test_without_freezer_nothing_appears(monkeypatch):
    # A freezer installed here (or imported already) is hidden for the test.
    for name in list(sys.modules):
        if name == "freezer" or name.startswith("freezer."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoFreezer(), *sys.meta_path])
    monkeypatch.delenv(freezer_hook.DISABLE_ENV, raising=False)
    freezer_hook.uninstall()
    freezer_hook.install()
    assert isinstance(sys.meta_path[0], freezer_hook.EngineFinder)
    with pytest.raises(ModuleNotFoundError) as raised:
        importlib.import_module(freezer_hook.TARGET)
    assert raised.value.name == "freezer"
    assert "freezer" not in sys.modules


def _adapted(module) -> bool:
    return hasattr(vars(module.S3Storage)["get_s3_connection"], "__wrapped__")


def test_freezers_s3_module_is_adapted_as_imported(fake_freezer):
    freezer_hook.install()
    module = importlib.import_module(freezer_hook.S3_MODULE)
    assert module.ORIGIN == "freezer"
    assert module.__file__.startswith(str(fake_freezer))
    assert module.__spec__.origin == module.__file__
    assert _adapted(module)
    # One client per storage object (freezer_compat.adapt_s3_module).
    one, two = module.S3Storage(), module.S3Storage()
    assert one.get_s3_connection() is one.get_s3_connection()
    assert one.get_s3_connection() is not two.get_s3_connection()
    # The wrapped loader answers as Freezer's for the rest.
    loader = module.__spec__.loader
    assert type(loader).__name__ == "_AdaptingLoader"
    assert "class S3Storage" in loader.get_source(freezer_hook.S3_MODULE)


@pytest.mark.parametrize("how", ["opt-out", "no-hook", "other-target"])
def test_freezers_s3_module_left_alone(fake_freezer, monkeypatch, how):
    if how == "opt-out":
        freezer_hook.install()
        monkeypatch.setenv(freezer_hook.DISABLE_ENV, "1")
    elif how == "other-target":     # a finder for another name adapts nothing
        sys.meta_path.insert(0, freezer_hook.EngineFinder(
            target="freezer.engine.tar.tar"))
    module = importlib.import_module(freezer_hook.S3_MODULE)
    assert module.ORIGIN == "freezer"
    assert not _adapted(module)
    assert module.__spec__.loader.__class__.__name__ != "_AdaptingLoader"


def test_failing_adaptation_does_not_break_the_import(fake_freezer, monkeypatch, caplog):
    from freezer_rsyncv2 import freezer_compat

    def fail(module):
        raise RuntimeError("adaptation failed")
    monkeypatch.setattr(freezer_compat, "adapt_s3_module", fail)
    freezer_hook.install()
    with caplog.at_level(logging.DEBUG, logger=freezer_hook.__name__):
        module = importlib.import_module(freezer_hook.S3_MODULE)
    assert module.ORIGIN == "freezer" and not _adapted(module)
    assert sys.modules[freezer_hook.S3_MODULE] is module
    said = [r for r in caplog.records if r.name == freezer_hook.__name__]
    assert len(said) == 1 and freezer_hook.S3_MODULE in said[0].getMessage()
    assert str(said[0].exc_info[1]) == "adaptation failed"


def test_freezers_own_import_errors_are_freezers(fake_freezer):
    (fake_freezer / "freezer" / "storage" / "s3.py").write_text(
        "raise ImportError('no botocore')\n")
    freezer_hook.install()
    with pytest.raises(ImportError, match="no botocore"):
        importlib.import_module(freezer_hook.S3_MODULE)
    assert freezer_hook.S3_MODULE not in sys.modules


def test_no_spec_or_no_loader_goes_to_the_normal_machinery(fake_freezer, monkeypatch):
    import importlib.machinery
    path = [str(fake_freezer / "freezer" / "storage")]
    assert freezer_hook._adapting_spec("freezer.storage.nothing", path) is None

    def boom(*args):
        raise OSError("unreadable")
    monkeypatch.setattr(importlib.machinery.PathFinder, "find_spec", boom)
    assert freezer_hook._adapting_spec(freezer_hook.S3_MODULE, path) is None


def test_load_is_logged(fake_freezer, caplog):
    freezer_hook.install()
    with caplog.at_level(logging.INFO):
        importlib.import_module(freezer_hook.TARGET)
    lines = [r.getMessage() for r in caplog.records
             if r.name == freezer_hook.TARGET]
    assert any("freezer_rsyncv2 %s" % freezer_rsyncv2.__version__ in line
               and freezer_hook.DISABLE_ENV in line for line in lines), lines


def _python(code: str, cwd: str, pythonpath: str | None, **env: str
            ) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("PYTHON") and k != freezer_hook.DISABLE_ENV}
    if pythonpath:
        clean["PYTHONPATH"] = pythonpath
    clean.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env=clean, cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_pth_line_installs_the_finder_cheaply(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / os.path.basename(PTH)).write_text(open(PTH).read())
    code = """
        import site, sys
        before = set(sys.modules)
        site.addsitedir(%r)
        new = sorted(set(sys.modules) - before)
        print([type(f).__name__ for f in sys.meta_path][0])
        print(",".join(new))
    """ % str(site_dir)
    done = _python(code, str(tmp_path), REPO)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    first, new = done.stdout.splitlines()
    assert first == "EngineFinder"
    # Start-up cost: our two tiny modules and nothing heavy.
    assert set(new.split(",")) <= {"freezer_rsyncv2",
                                   "freezer_rsyncv2.freezer_hook",
                                   "__future__"}, new

    off = _python(code, str(tmp_path), REPO, **{freezer_hook.DISABLE_ENV: "1"})
    assert off.returncode == 0 and off.stderr == ""
    assert off.stdout.splitlines()[0] != "EngineFinder"


def test_pth_line_never_breaks_start_up(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / os.path.basename(PTH)).write_text(open(PTH).read())
    # Our package fails to import: the .pth line must stay silent.
    broken = tmp_path / "broken" / "freezer_rsyncv2"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('broken')\n")
    code = """
        import site, sys
        site.addsitedir(%r)
        print("alive", [type(f).__name__ for f in sys.meta_path])
    """ % str(site_dir)
    done = _python(code, str(tmp_path), str(broken.parent))
    assert done.returncode == 0
    assert done.stderr == ""
    assert done.stdout.startswith("alive")
    assert "EngineFinder" not in done.stdout


def test_pth_file_is_one_import_line():
    with open(PTH) as handle:
        lines = [line for line in handle.read().splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0].startswith("import ")
