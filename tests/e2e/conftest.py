"""Fixtures for the end-to-end tests.

- Every test under ``tests/e2e`` gets the ``e2e`` marker (``pytest -m "not e2e"`` skips them).
- A session fixture makes sure ``sipp`` and ``baresip`` are installed, running
  ``scripts/install_peers.sh`` when one is missing; if they still can't be had, the
  tests *fail* (a skipped end-to-end test hides a defect).
- ``b2bua``: a factory fixture; ``b2bua(config_text)`` starts a :class:`B2buaProcess`
  in ``tmp_path`` and stops it at teardown (its log is printed on failure by pytest's
  captured-output report, since teardown prints it).
- ``baresip``: a factory fixture for :class:`Baresip` phones, stopped at teardown.
- ``rtp``: a factory for :class:`RtpEndpoint`, closed at teardown.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .peers import B2buaProcess, Baresip, RtpEndpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def e2e_peers_installed():
    """sipp and baresip on PATH, installing them if needed; fails the session's e2e tests otherwise."""
    if not (shutil.which("sipp") and shutil.which("baresip")):
        result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "install_peers.sh")],
                                capture_output=True, text=True, timeout=900)
        if not (shutil.which("sipp") and shutil.which("baresip")):
            pytest.fail(f"e2e peers missing and scripts/install_peers.sh could not install them "
                        f"(exit {result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False)


@pytest.fixture
def b2bua(tmp_path):
    """Factory: ``pbx = b2bua(config_text)`` -> a started :class:`B2buaProcess`; stopped at teardown."""
    started: list[B2buaProcess] = []

    def make(config_text: str, **kw) -> B2buaProcess:
        proc = B2buaProcess(config_text, tmp_path, name=f"b2bua{len(started)}" if started else "b2bua", **kw)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()
        print(f"--- {proc.name} log ---\n{proc.logs()[-20000:]}")


@pytest.fixture
def baresip(tmp_path):
    """Factory: ``alice = baresip("alice", "secret", pbx.sip_address, tone_hz=1000)`` -> a started
    :class:`Baresip` (registered when a registrar is given); stopped at teardown."""
    started: list[Baresip] = []

    def make(user: str, password: str | None = None, registrar: str | None = None, **kw) -> Baresip:
        phone = Baresip(user, password, registrar, tmp_path, **kw)
        started.append(phone)
        return phone.start()

    yield make
    for phone in started:
        phone.stop()
        print(f"--- {phone.name} log (tail) ---\n{phone.logs()[-5000:]}")


@pytest.fixture
def rtp():
    """Factory: ``ep = rtp()`` -> an :class:`RtpEndpoint` on a free even port; closed at teardown."""
    made: list[RtpEndpoint] = []

    def make(**kw) -> RtpEndpoint:
        ep = RtpEndpoint(**kw)
        made.append(ep)
        return ep

    yield make
    for ep in made:
        ep.close()
