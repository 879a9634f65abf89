"""freezer-agent test fixtures: a venv with freezer and this package, Keystone stand-in, runner.

When ``freezer==19.0.0`` cannot be installed (no network, no PyPI mirror),
every freezer-agent test fails with pip's reason: a run that did not test the
agent must not look green.  There is no switch to skip them; to leave them
out on purpose, deselect them: ``pytest -m "not integration"``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.keystone_stub import KeystoneStub

REPO = Path(__file__).resolve().parents[2]
FREEZER_REQUIREMENT = "freezer==19.0.0"
#: Reuse (and create if missing) a venv at this path between runs, to save
#: the minute freezer's installation takes; our package is reinstalled
#: every session.  Unset: a fresh venv under pytest's tmp dir.
REUSE_ENV = "FREEZER_AGENT_TEST_VENV"
PIP_TIMEOUT = 600
AGENT_TIMEOUT = 180
HOST = "testhost"

# Not copied into the build tree: VCS, caches, local venvs, old build output
# (a stale build/ would ship modules deleted from the source).
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "venv", ".tox", "build", "dist", "*.egg-info",
    "__pycache__", ".hypothesis", ".mypy_cache", ".pytest_cache",
    "bench-data", ".eggs")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Python, OpenStack or hook settings leaking in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "OS_", "FREEZER_RSYNCV2_"))
           and k not in ("VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
                "LC_ALL": "C.UTF-8", "TZ": "UTC"})
    env.update(extra)
    return env


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """Run with a deadline; on timeout the whole process group is killed and the test fails."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail("%s did not finish in %d s (killed):\n%s" % (
            " ".join(cmd), timeout, _tail(out + err)))
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclasses.dataclass
class FreezerVenv:
    """A venv holding freezer-agent and a regular (non-editable) install of this package."""

    root: Path
    wheel: Path
    timings: dict[str, float]

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    @property
    def python(self) -> str:
        return self.bin("python")

    @property
    def site_packages(self) -> Path:
        done = _run([self.python, "-c",
                     "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    60, env=clean_env())
        return Path(done.stdout.strip())

    def pip(self, *args: str, timeout: float = PIP_TIMEOUT
            ) -> subprocess.CompletedProcess:
        return _run([self.python, "-m", "pip", *args], timeout,
                    env=clean_env(), cwd=str(self.root))

    def install_ours(self) -> None:
        """Reinstall our wheel (its dependencies are already there)."""
        done = self.pip("install", "-q", "--no-deps", "--force-reinstall",
                        str(self.wheel))
        assert done.returncode == 0, "reinstalling our wheel failed:\n" + \
            _tail(done.stdout + done.stderr)


@pytest.fixture(scope="session")
def freezer_venv(tmp_path_factory) -> FreezerVenv:
    """The venv, made once per session: freezer 19.0.0 from PyPI and our wheel, one pip run."""
    timings: dict[str, float] = {}
    reuse = os.environ.get(REUSE_ENV)
    root = Path(reuse) if reuse else tmp_path_factory.mktemp("agent") / "venv"
    start = time.monotonic()
    if not (root / "bin" / "python").exists():
        done = _run([sys.executable, "-m", "venv", str(root)], 300,
                    env=clean_env())
        assert done.returncode == 0, "cannot create a venv:\n" + \
            _tail(done.stdout + done.stderr)
    venv = FreezerVenv(root=root, wheel=Path(), timings=timings)
    timings["venv"] = time.monotonic() - start

    # A regular (non-editable) install from a wheel built out of a clean
    # copy of the source tree.
    start = time.monotonic()
    work = tmp_path_factory.mktemp("ourwheel")
    shutil.copytree(REPO, work / "src", ignore=_IGNORE)
    done = venv.pip("wheel", "-q", "--no-deps", "-w", str(work / "wheels"),
                    str(work / "src"))
    assert done.returncode == 0, "building our wheel failed:\n" + \
        _tail(done.stdout + done.stderr)
    venv.wheel = next((work / "wheels").glob("freezer_rsyncv2-*.whl"))
    timings["wheel"] = time.monotonic() - start

    start = time.monotonic()
    done = venv.pip("install", "-q", FREEZER_REQUIREMENT, str(venv.wheel))
    if done.returncode != 0:
        # Whose fault, freezer's or ours?  Either way the tests did not run:
        # a failure, never a skip.
        alone = venv.pip("install", "-q", FREEZER_REQUIREMENT)
        if alone.returncode != 0:
            pytest.fail("%s cannot be installed (pip exit %d), so the "
                        "freezer-agent tests cannot run; they need PyPI (or a "
                        "mirror pip is configured for):\n%s" % (
                            FREEZER_REQUIREMENT, alone.returncode,
                            _tail(alone.stdout + alone.stderr)))
        pytest.fail("installing our wheel next to %s failed:\n%s" % (
            FREEZER_REQUIREMENT, _tail(done.stdout + done.stderr)))
    if reuse:
        venv.install_ours()     # same version number: force the new build
    timings["pip install"] = time.monotonic() - start
    print("\nfreezer-agent venv at %s: %s" % (root, ", ".join(
        "%s %.1f s" % kv for kv in timings.items())), file=sys.stderr)
    return venv


@pytest.fixture(scope="session")
def keystone():
    with KeystoneStub() as stub:
        yield stub


#: Runs freezer-agent's entry point (as its console script does) and, at
#: exit, copies the process's own /proc/self/status to the file named by
#: AGENT_STATUS_OUT: its VmHWM is the agent's peak resident set size, as
#: the kernel counted it for that process.
MEASURED_AGENT = """
import atexit, os, re, sys
def _status(path=os.environ["AGENT_STATUS_OUT"]):
    with open("/proc/self/status") as f, open(path, "w") as out:
        out.write(f.read())
atexit.register(_status)
from freezer.main import main
sys.argv[0] = "freezer-agent"
sys.exit(main())
"""


@dataclasses.dataclass
class AgentRun:
    """One freezer-agent run: exit code, output, its log file and --metadata-out."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    log: str
    metadata: dict
    #: /proc/self/status of the agent process at its exit (measured runs)
    status: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def peak_rss_mb(self) -> float:
        """The agent process's peak resident set size (VmHWM), in MB (10**6 bytes)."""
        kib = self.status["VmHWM"].split()
        assert kib[1] == "kB", self.status["VmHWM"]
        return int(kib[0]) * 1024 / 1e6

    def explain(self) -> str:
        return "freezer-agent %s\nexit %d\n--- stderr\n%s\n--- log\n%s" % (
            " ".join(self.args), self.returncode, _tail(self.stderr, 10),
            _tail(self.log, 40))

    def ok(self) -> "AgentRun":
        assert self.returncode == 0, self.explain()
        return self


class Agent:
    """Runs freezer-agent from the test venv against the Keystone stand-in."""

    def __init__(self, venv: FreezerVenv, keystone: KeystoneStub,
                 workdir: Path) -> None:
        self.venv = venv
        self.keystone = keystone
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.runs = 0

    def env(self, **extra: str) -> dict[str, str]:
        path = "%s%s%s" % (self.venv.root / "bin", os.pathsep,
                           os.environ.get("PATH", "/usr/bin:/bin"))
        return clean_env(HOME=str(self.home), PATH=path,
                         **self.keystone.env(), **extra)

    def __call__(self, *args: str, env: dict[str, str] | None = None,
                 timeout: float = AGENT_TIMEOUT, measure: bool = False
                 ) -> AgentRun:
        """Run freezer-agent; with ``measure`` the run's ``status`` holds
        the agent process's own /proc/self/status at its exit."""
        self.runs += 1
        log = self.workdir / ("agent-%03d.log" % self.runs)
        meta = self.workdir / ("agent-%03d.json" % self.runs)
        status = self.workdir / ("agent-%03d.status" % self.runs)
        extra = dict(env or {})
        if measure:
            argv = [self.venv.python, "-c", MEASURED_AGENT]
            extra["AGENT_STATUS_OUT"] = str(status)
        else:
            argv = [self.venv.bin("freezer-agent")]
        argv += [*args, "--log-file", str(log), "--metadata-out", str(meta)]
        done = _run(argv, timeout, env=self.env(**extra),
                    cwd=str(self.workdir))
        text = log.read_text(errors="replace") if log.exists() else ""
        metadata = {}
        if meta.exists() and meta.stat().st_size:
            metadata = json.loads(meta.read_text())
        fields = {}
        if measure and status.exists():
            for line in status.read_text().splitlines():
                key, _sep, value = line.partition(":")
                fields[key] = value.strip()
        return AgentRun(args=list(args), returncode=done.returncode,
                        stdout=done.stdout, stderr=done.stderr, log=text,
                        metadata=metadata, status=fields)

    def venv_python(self, code: str, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess:
        """Run Python code in the test venv (as the agent's interpreter starts)."""
        return _run([self.venv.python, "-c", code], 120,
                    env=self.env(**(env or {})), cwd=str(self.workdir))

    def cli(self, *args: str, timeout: float = AGENT_TIMEOUT
            ) -> subprocess.CompletedProcess:
        """Our own command line, from the same venv."""
        return _run([self.venv.bin("freezer-rsyncv2"), *args], timeout,
                    env=self.env(), cwd=str(self.workdir))


@pytest.fixture
def agent(freezer_venv, keystone, tmp_path) -> Agent:
    return Agent(freezer_venv, keystone, tmp_path / "agent")
