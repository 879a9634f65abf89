"""Import hook that makes freezer-agent's ``--engine rsyncv2`` load this library's engine."""

# freezer-agent loads freezer.engine.<name>.<name>.<Name>Engine and has no
# plug-in point, so a .pth file installed with this package calls install(),
# which puts EngineFinder first on sys.meta_path.  The finder answers for
# exactly one module name, freezer.engine.rsyncv2.rsyncv2, and serves
# freezer_rsyncv2/freezer_engine.py under that name; every other import,
# including the rest of Freezer, goes to the normal machinery.  Freezer's
# files are never touched and nothing of Freezer is imported here.
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

    from importlib.machinery import ModuleSpec

#: The module freezer-agent imports for ``--engine rsyncv2``.
TARGET = "freezer.engine.rsyncv2.rsyncv2"
#: Our module served under that name (it exposes ``Rsyncv2Engine``).
REPLACEMENT = "freezer_rsyncv2.freezer_engine"
#: Set to 1/true/yes/on to get Freezer's own rsyncv2 engine back.
DISABLE_ENV = "FREEZER_RSYNCV2_DISABLE"

_TRUE = frozenset({"1", "true", "yes", "on"})


def disabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when the opt-out environment variable asks for Freezer's own engine."""
    env = os.environ if environ is None else environ
    return str(env.get(DISABLE_ENV, "")).strip().lower() in _TRUE


class EngineFinder:
    """Meta path finder that serves REPLACEMENT's file under the TARGET name, nothing else."""

    def __init__(self, target: str = TARGET,
                 replacement: str = REPLACEMENT) -> None:
        self.target = target
        self.replacement = replacement

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: Any = None) -> ModuleSpec | None:
        """The spec of our module under ``fullname`` if it is the target, else None."""
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
