"""Import hook that makes freezer-agent's ``--engine rsyncv2`` load this library's engine."""

# freezer-agent loads freezer.engine.<name>.<name>.<Name>Engine and has no
# plug-in point, so a .pth file installed with this package calls install(),
# which puts EngineFinder first on sys.meta_path.  The finder answers for
# two module names.  For freezer.engine.rsyncv2.rsyncv2 it serves
# freezer_rsyncv2/freezer_engine.py under that name.  For freezer.storage.s3
# it returns Freezer's own spec with a loader that, once Freezer's module has
# run, lets freezer_compat.adapt_s3_module give its S3Storage one lean client
# per storage object (docs/freezer-agent.rst, "Memory"): Freezer builds its
# S3 storage, and with it botocore clients, before our engine is loaded.
# Every other import, including the rest of Freezer, goes to the normal
# machinery.  Freezer's files are never touched and nothing of Freezer is
# imported here.
#
# This module runs at every interpreter start-up (from the .pth file): it
# imports only os and sys, does no file system work in install(), and never
# raises out of it.  FREEZER_RSYNCV2_DISABLE=1 (or true/yes/on) in the
# environment turns the hook off: Freezer's own rsyncv2 engine is used.

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:       # typing only: start-up imports stay os and sys
    from collections.abc import Mapping, Sequence
    from typing import Any

    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

#: The module freezer-agent imports for ``--engine rsyncv2``.
TARGET = "freezer.engine.rsyncv2.rsyncv2"
#: Our module served under that name (it exposes ``Rsyncv2Engine``).
REPLACEMENT = "freezer_rsyncv2.freezer_engine"
#: Freezer's S3 storage module, adapted as it is imported (freezer_compat.adapt_s3_module).
S3_MODULE = "freezer.storage.s3"
#: Set to 1/true/yes/on to get Freezer's own rsyncv2 engine back.
DISABLE_ENV = "FREEZER_RSYNCV2_DISABLE"

_TRUE = frozenset({"1", "true", "yes", "on"})


def disabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when the opt-out environment variable asks for Freezer's own engine."""
    env = os.environ if environ is None else environ
    return str(env.get(DISABLE_ENV, "")).strip().lower() in _TRUE


class EngineFinder:
    """Meta path finder that serves REPLACEMENT's file under the TARGET name and adapts S3_MODULE."""

    def __init__(self, target: str = TARGET,
                 replacement: str = REPLACEMENT) -> None:
        self.target = target
        self.replacement = replacement

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: Any = None) -> ModuleSpec | None:
        """The spec of our module under ``fullname`` if it is the target, else None.

        Freezer's S3 module gets its own spec, with a loader that adapts
        it once it has run (only for the finder of the real TARGET, so a
        finder made for another name changes nothing else).
        """
        if fullname == S3_MODULE and self.target == TARGET and not disabled():
            return _adapting_spec(fullname, path)
        if fullname != self.target or disabled():
            return None
        import importlib.util   # only now: the target is being imported
        try:
            ours = importlib.util.find_spec(self.replacement)
            if ours is None or not ours.origin or not ours.has_location:
                return None     # ours is gone (half-uninstalled?): Freezer's
            # A fresh spec for the same file under Freezer's name: Freezer
            # gets a separate module object whose __file__ says where it
            # really comes from.
            return importlib.util.spec_from_file_location(fullname,
                                                          ours.origin)
        except Exception:       # never break an import: Freezer's loads
            return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r} -> {self.replacement!r})"


def _adapting_spec(fullname: str, path: Sequence[str] | None) -> ModuleSpec | None:
    """The spec the path machinery finds for ``fullname``, its loader wrapped in _AdaptingLoader.

    None (the normal machinery then imports the module as usual) when
    there is no such module, its loader cannot be wrapped, or anything
    goes wrong: the hook must never break freezer-agent.
    """
    try:
        import importlib.machinery  # only now: Freezer's S3 module is being imported
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _AdaptingLoader(spec.loader)  # type: ignore[assignment]  # a Loader in all but its base class
        return spec
    except Exception:
        return None


class _AdaptingLoader:
    """Freezer's loader for its S3 module, followed by ``freezer_compat.adapt_s3_module``.

    Anything else asked of it (``get_source``, ``get_resource_reader``...)
    is the original loader's answer.
    """

    def __init__(self, loader: Loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)     # Freezer's errors are Freezer's to raise
        try:
            from freezer_rsyncv2 import freezer_compat
            freezer_compat.adapt_s3_module(module)
        except Exception:                   # Freezer's module stays as it is
            import logging
            logging.getLogger(__name__).debug(
                "rsyncv2 engine: %s left as it is", module.__name__, exc_info=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loader!r})"


def installed_finder() -> EngineFinder | None:
    """The finder on sys.meta_path, if one is installed."""
    for finder in sys.meta_path:
        if isinstance(finder, EngineFinder):
            return finder
    return None


def install() -> bool:
    """Put the finder first on sys.meta_path (once); True if it is there afterwards.

    Called from the ``.pth`` file at start-up, so it must be cheap and must
    never raise.  If Freezer's module was already imported, it is left as it
    is: swapping a module under running code would be worse than not
    hooking.
    """
    try:
        if disabled():
            return False
        if installed_finder() is None:
            sys.meta_path.insert(0, EngineFinder())
        return True
    except Exception:           # never break interpreter start-up
        return False


def uninstall() -> None:
    """Remove every EngineFinder from sys.meta_path (for tests and embedding)."""
    sys.meta_path[:] = [f for f in sys.meta_path
                        if not isinstance(f, EngineFinder)]
