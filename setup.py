"""Build script: metadata is in setup.cfg; this adds the freezer-agent hook's .pth to the wheel."""

import os

import setuptools
from setuptools.command.build_py import build_py

# Installed at the root of site-packages (next to the packages), where
# Python's site module runs it at start-up; see docs/freezer-agent.rst.
PTH_FILE = "freezer_rsyncv2_hook.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithPth(build_py):
    """build_py that also copies the .pth file to the root of the build directory.

    Everything in build_lib goes into the wheel's purelib root, so the
    file lands in site-packages and in the wheel's RECORD (pip uninstall
    removes it).
    """

    def run(self) -> None:
        super().run()
        self.copy_file(os.path.join(HERE, PTH_FILE),
                       os.path.join(self.build_lib, PTH_FILE),
                       preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, PTH_FILE)]


setuptools.setup(cmdclass={"build_py": BuildPyWithPth})
