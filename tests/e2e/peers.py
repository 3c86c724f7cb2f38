"""Real SIP peers for the end-to-end tests, and the B2BUA as a subprocess.

Everything runs on 127.0.0.1 with random free ports.  The pieces:

- :func:`free_port`, :func:`free_udp_port_pair`, :func:`free_port_range`: ports.
- :class:`B2buaProcess`: ``python -m b2bua run --config flows.toml`` with its
  logs captured, started when it answers an OPTIONS.
- :class:`Baresip`: a real softphone (baresip) with a generated config: plays a
  WAV, records what it hears, auto-answers, dials, hangs up, sends RFC 4733
  digits, reports call events; driven over ``ctrl_tcp``.
- :class:`Sipp`: runs one of ``tests/e2e/scenarios/*.xml`` as UAC or UAS.
- :class:`RtpEndpoint`: a Python RTP socket that records what it receives
  (PCMU decoded onto a timeline, RFC 4733 digits) and sends tone/digit trains:
  "what the trunk heard", which SIPp cannot tell.
- :class:`PyVoipPhone`: a pyVoIP 1.6.8 phone that registers, auto-answers,
  plays a tone and records what it hears.
- :class:`PyTrunk`: a small, tolerant SIP trunk in Python (calls out, answers,
  CANCEL/BYE both ways), its media an :class:`RtpEndpoint` on the SDP port;
  the alternative to SIPp when the test must see the trunk's media or must not
  fail on extra messages.

A typical scenario test (``tests/e2e/test_harness.py`` has working uses of each piece)::

    def test_inbound_call_is_recorded(tmp_path, b2bua, baresip):
        ports = Ports.allocate()
        pbx = b2bua(f'''
            [server]
            listen = "{ports.listen}"
            rtp_ports = "{ports.rtp_ports}"
            [organisation]
            name = "Test"
            {alice_line(ports.trunk)}
        ''')
        alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)  # registered
        Sipp("uac_call.xml", tmp_path, remote=pbx.sip_address, port=ports.trunk_port,
             service="441632960000",
             params={"pcap": write_pcap(tmp_path / "in.pcap", [Tone(440, 3.0)]), "pause_ms": 4000},
             ).run().check()
        alice.wait_for("closed", 5)
        wav = pbx.wait_for_recording()
        x, rate = load_wav(wav)
        assert has_tone(x[:, 0], rate, 440) and has_tone(x[:, 1], rate, 1000)
        assert has_tone(*channel(alice.heard_wav()), 440)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from . import pcap as pcapmod
from .audio import make_tone_wav

LOCALHOST = "127.0.0.1"
SCENARIOS_DIR = Path(__file__).parent / "scenarios"
REPO_ROOT = Path(__file__).resolve().parents[2]

B2BUA_START_TIMEOUT_S = 10.0
"""How long the B2BUA may take to answer its first OPTIONS."""

STOP_TIMEOUT_S = 10.0
"""How long a process may take to exit after SIGTERM before it is killed."""

BARESIP_READY_TIMEOUT_S = 10.0
"""How long baresip may take to open its control socket (and to register, when it has a registrar)."""

BARESIP_SOURCE_SECONDS = 120.0
"""Length of generated source WAVs: baresip's aufile source ends the call at end of file."""

# ---------------------------------------------------------------------------
# Ports.

def _below_ephemeral(default_high: int = 32767) -> int:
    """The highest port below the kernel's ephemeral range (where it picks the source port of
    every outgoing connection: Redis and HTTP clients, Kamailio's TCP, SIPp). A port we checked
    free there can be taken by such a connection before our peer binds it: baresip once failed
    to start on its control port that way, in CI."""
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return default_high
    return low - 1 if low > 21000 else default_high


_RANDOM_PORT_LOW, _RANDOM_PORT_HIGH = 20000, _below_ephemeral()
"""Where port-range helpers look: below the ephemeral range; collisions between tests are
detected by binding."""


def _family(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal ("::1"), else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def hostport(host: str, port: int) -> str:
    """"127.0.0.1:5060", or "[::1]:5060" for an IPv6 host (RFC 3986 §3.2.2)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _can_bind(port: int, kind: int = socket.SOCK_DGRAM, host: str | None = None) -> bool:
    host = host or LOCALHOST
    s = socket.socket(_family(host), kind)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port(kind: str = "udp", host: str | None = None) -> int:
    """A random port on ``host`` (127.0.0.1; "::1" for IPv6) that is free now for ``kind``: "udp",
    "tcp" or "both" (use "both" for SIP listeners, which bind UDP and TCP)."""
    host = host or LOCALHOST
    for _ in range(200):
        port = random.randint(_RANDOM_PORT_LOW, _RANDOM_PORT_HIGH)
        if kind in ("udp", "both") and not _can_bind(port, socket.SOCK_DGRAM, host):
            continue
        if kind in ("tcp", "both") and not _can_bind(port, socket.SOCK_STREAM, host):
            continue
        return port
    raise RuntimeError("no free port found")


def free_udp_port_pair(host: str | None = None) -> int:
    """An even UDP port p with p+1 also free on ``host`` (RTP and RTCP, RFC 3550 §11). Returns p."""
    host = host or LOCALHOST
    for _ in range(200):
        port = random.randint(_RANDOM_PORT_LOW // 2, _RANDOM_PORT_HIGH // 2) * 2
        if _can_bind(port, host=host) and _can_bind(port + 1, host=host):
            return port
    raise RuntimeError("no free UDP port pair found")


def free_port_range(count: int = 20, host: str | None = None) -> tuple[int, int]:
    """An even-aligned range ``(low, high)`` of ``count`` UDP ports that are all free now on ``host``.

    For ``rtp_ports = "low-high"`` in flows.toml and for peers' RTP ranges.
    """
    host = host or LOCALHOST
    count += count % 2
    for _ in range(100):
        low = random.randint(_RANDOM_PORT_LOW // 2, (_RANDOM_PORT_HIGH - count) // 2) * 2
        if all(_can_bind(p, host=host) for p in range(low, low + count)):
            return low, low + count - 1
    raise RuntimeError(f"no free range of {count} UDP ports")


@dataclass(frozen=True)
class Ports:
    """A fresh set of ports for one scenario: the B2BUA's SIP port, the trunk's SIP port, the
    B2BUA's RTP range.  Format them into flows.toml::

        ports = Ports.allocate()
        config = f'''
        [server]
        listen = "{ports.listen}"
        rtp_ports = "{ports.rtp_ports}"
        [[trunks]]
        name = "carrier"
        sources = ["{ports.trunk}"]
        uri = "sip:{ports.trunk}"
        '''
        Sipp("uac_call.xml", tmp_path, remote=ports.listen, port=ports.trunk_port, ...)
    """

    sip_port: int
    trunk_port: int
    rtp_low: int
    rtp_high: int

    @classmethod
    def allocate(cls, rtp_count: int = 40) -> "Ports":
        sip = free_port("both")
        trunk = free_port("both")
        while trunk == sip:
            trunk = free_port("both")
        low, high = free_port_range(rtp_count)
        while low <= sip <= high or low <= trunk <= high:  # free now, but the B2BUA would refuse the overlap
            low, high = free_port_range(rtp_count)
        return cls(sip, trunk, low, high)

    @property
    def listen(self) -> str:
        """"127.0.0.1:SIP_PORT": ``[server] listen``, and the registrar for phones."""
        return f"{LOCALHOST}:{self.sip_port}"

    @property
    def trunk(self) -> str:
        """"127.0.0.1:TRUNK_PORT": the trunk's ``sources`` entry and ``uri`` host; SIPp's ``-p``."""
        return f"{LOCALHOST}:{self.trunk_port}"

    @property
    def rtp_ports(self) -> str:
        """"LOW-HIGH" for ``[server] rtp_ports``."""
        return f"{self.rtp_low}-{self.rtp_high}"


def alice_line(trunk: str, *, more_sources: tuple[str, ...] = (), alice_extra: str = "") -> str:
    """The organisation most e2e tests share, as flows.toml tables: the trunk `trunk`
    ("ip:port", also sending from `more_sources`) whose number 441632960000 (record = "yes")
    rings alice (extension 201, password alice-secret; `alice_extra`: more of her keys)."""
    sources = ", ".join(f'"{s}"' for s in (trunk, *more_sources))
    return f'''[[trunks]]
name = "carrier"
sources = [{sources}]
uri = "sip:{trunk}"
[[numbers]]
ddi = "441632960000"
record = "yes"
to = "user:alice"
[[users]]
name = "alice"
extension = "201"
password = "alice-secret"
{alice_extra}'''


def split_hostport(address: str, default_port: int = 5060) -> tuple[str, int]:
    """"127.0.0.1:5070" -> ("127.0.0.1", 5070); "[::1]:5070" -> ("::1", 5070)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host, int(port)


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate()`` until it returns a truthy value (returned) or ``timeout`` s pass (TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Minimal SIP over UDP (just enough to ping a server).


def sip_options_ping(address: str, timeout: float = 0.5) -> str | None:
    """Send one OPTIONS to ``address`` ("ip:port") over UDP; return the status line of any reply, or None."""
    host, port = split_hostport(address)
    local = "::1" if ":" in host else LOCALHOST
    s = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        s.bind((local, 0))
        lport = s.getsockname()[1]
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        msg = (
            f"OPTIONS sip:{hostport(host, port)} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {hostport(local, lport)};branch={branch};rport\r\n"
            f"From: <sip:e2e-probe@{hostport(local, lport)}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <sip:{hostport(host, port)}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@{LOCALHOST}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\n"
            f"Contact: <sip:e2e-probe@{hostport(local, lport)}>\r\n"
            "Accept: application/sdp\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.settimeout(timeout)
        s.sendto(msg.encode(), (host, port))
        data, _ = s.recvfrom(65535)
        return data.split(b"\r\n", 1)[0].decode(errors="replace")
    except (socket.timeout, ConnectionRefusedError, OSError):
        return None
    finally:
        s.close()


# ---------------------------------------------------------------------------
# Process helper.


class _Process:
    """A subprocess with stdout+stderr in a log file, stopped by SIGTERM then SIGKILL."""

    def __init__(self, argv: Sequence[str], log_path: Path, cwd: Path | None = None, env: Mapping[str, str] | None = None):
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=cwd, env=dict(env) if env is not None else None, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> int:
        """SIGKILL now (a crash, as far as the process can tell)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(5)
        return self.proc.returncode


# ---------------------------------------------------------------------------
# The B2BUA.


class B2buaProcess:
    """The B2BUA under test, as ``python -m b2bua run --config <tmp_path>/flows.toml``.

    ``config_text`` is the whole flows.toml; it must name ``[server] listen``
    (use :func:`free_port` for it) so the harness knows where to ping.
    The process starts in ``tmp_path`` with stdout+stderr in ``b2bua.log``;
    ``start()`` (or entering the context) returns once the SIP port answers an
    OPTIONS over UDP with any response, bounded by :data:`B2BUA_START_TIMEOUT_S`;
    it raises with the logs if the process exits or never answers.

    ``module`` replaces ``b2bua`` in ``python -m b2bua`` (the harness tests use a stub);
    ``env`` replaces the environment (the repo root is put on PYTHONPATH either way).

    Attributes: ``config_path``, ``sip_address`` ("127.0.0.1:PORT"),
    ``sip_port``, ``recordings_dir`` (resolved as the B2BUA does: relative to
    the config file).
    """

    def __init__(self, config_text: str, tmp_path: Path, *, name: str = "b2bua", extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, module: str = "b2bua"):
        self.tmp_path = Path(tmp_path)
        self.name = name
        self.config_path = self.tmp_path / f"{name}-flows.toml" if name != "b2bua" else self.tmp_path / "flows.toml"
        self.config_path.write_text(config_text)
        config = tomllib.loads(config_text)
        server = config.get("server", {})
        self.sip_address = server.get("listen", f"{LOCALHOST}:5060")
        self.sip_host, self.sip_port = split_hostport(self.sip_address)
        rec = Path(server.get("recordings_dir", "recordings"))
        self.recordings_dir = rec if rec.is_absolute() else self.config_path.parent / rec
        self.extra_args = list(extra_args)
        self.env = env
        self.module = module
        self.log_path = self.tmp_path / f"{name}.log"
        self._proc: _Process | None = None
        self.returncode: int | None = None

    # -- lifecycle --
    def start(self, timeout: float = B2BUA_START_TIMEOUT_S) -> "B2buaProcess":
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        argv = [sys.executable, "-m", self.module, "run", "--config", str(self.config_path), *self.extra_args]
        self._proc = _Process(argv, self.log_path, cwd=self.tmp_path, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._proc.alive():
                raise RuntimeError(f"b2bua exited with {self._proc.proc.returncode} before answering:\n{self.logs()}")
            if sip_options_ping(self.sip_address, timeout=0.3) is not None:
                return self
            time.sleep(0.1)
        self.kill9()
        raise TimeoutError(f"b2bua did not answer OPTIONS on {self.sip_address} within {timeout}s:\n{self.logs()}")

    def __enter__(self) -> "B2buaProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (graceful: calls get BYE, recordings are finalised), wait ≤ ``timeout`` s, then SIGKILL."""
        if self._proc is not None:
            self.returncode = self._proc.stop(timeout)
        return self.returncode

    def kill9(self) -> int | None:
        """SIGKILL: simulate a crash (recordings must stay playable)."""
        if self._proc is not None:
            self.returncode = self._proc.kill9()
            self._proc.stop(0)
        return self.returncode

    def logs(self) -> str:
        """Everything the B2BUA wrote to stdout and stderr so far."""
        return self._proc.logs() if self._proc else ""

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        """Wait until a regex matches the logs; returns the match."""
        return wait_until(lambda: re.search(pattern, self.logs()), timeout, what=f"log /{pattern}/")

    # -- recordings --
    def recordings(self) -> list[Path]:
        """All ``*.wav`` under the recordings dir, sorted by path."""
        if not self.recordings_dir.exists():
            return []
        return sorted(self.recordings_dir.rglob("*.wav"))

    def wait_for_recording(self, count: int = 1, timeout: float = 5.0) -> Path:
        """Wait until ``count`` recordings exist with their JSON sidecars, and the sidecar has ``ended``;
        return the newest WAV."""
        def ready():
            wavs = self.recordings()
            if len(wavs) < count:
                return None
            for w in wavs:
                side = w.with_suffix(".json")
                try:
                    if not json.loads(side.read_text()).get("ended"):
                        return None
                except (FileNotFoundError, ValueError):
                    return None
            return max(wavs, key=lambda p: p.stat().st_mtime)
        return wait_until(ready, timeout, what=f"{count} finalised recording(s) in {self.recordings_dir}")

    @staticmethod
    def sidecar(wav: Path) -> dict:
        """The JSON sidecar of a recording."""
        return json.loads(Path(wav).with_suffix(".json").read_text())


# ---------------------------------------------------------------------------
# baresip.


def _netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


class Baresip:
    """A baresip softphone with a generated config, driven over ``ctrl_tcp``.

    Args:
        user: SIP user (AOR ``sip:USER@<registrar host:port>``).
        password: digest password (``;auth_pass=``).
        registrar: "127.0.0.1:PORT" of the registrar (the B2BUA); None: no
            registration (``regint=0``), the phone is reachable directly at
            ``sip_address``.
        tmp_path: where the config dir, logs and audio files go.
        audio_source_wav: what the phone sends (8 kHz mono S16 WAV; baresip's
            aufile *ends the call* at end of file, so make it long).
        tone_hz: instead of a WAV, send a generated sine (0: silence). The default
            source is silence.
        record_to_wav: where :meth:`heard_wav` copies what the phone received.
        auto_answer: ``;answermode=auto`` (answers at once) or manual (call :meth:`accept`).
        extra_config: lines appended to baresip's ``config`` file.
        register_timeout: bound for the registration wait in :meth:`start`.
        wait_registered: False: :meth:`start` does not wait for (or require) registration,
            e.g. to test a wrong password; poll :meth:`is_registered` yourself.

    How it hears: the ``sndfile`` audio filter dumps each call's decoded
    receive audio to ``snd/dump-<date-time>-dec.wav`` (and the sent audio to
    ``-enc.wav``), finalised when the call closes.  These dumps hold received
    frames back to back: gaps in the stream (e.g. while the far end sends
    only telephone-events) are *not* filled with silence, so use them for
    "what frequency, how loud", not for precise timing.

    Events (``wait_for``): "registered" (only for re-registrations: the first
    REGISTER_OK usually fires before ctrl_tcp connects; ``start()`` checks with
    :meth:`is_registered` instead), "incoming", "ringing", "progress",
    "established", "closed", "dtmf" or any raw ctrl_tcp event type such as
    "CALL_CLOSED".
    """

    EVENT_ALIASES = {
        "registered": "REGISTER_OK",
        "register_failed": "REGISTER_FAIL",
        "incoming": "CALL_INCOMING",
        "ringing": "CALL_RINGING",
        "progress": "CALL_PROGRESS",
        "established": "CALL_ESTABLISHED",
        "closed": "CALL_CLOSED",
        "dtmf": "CALL_DTMF_START",
    }

    def __init__(self, user: str, password: str | None = None, registrar: str | None = None, tmp_path: Path | None = None,
                 *, audio_source_wav: str | Path | None = None, tone_hz: float | None = None,
                 record_to_wav: str | Path | None = None, auto_answer: bool = True, name: str | None = None,
                 extra_config: str = "", register_timeout: float = BARESIP_READY_TIMEOUT_S,
                 wait_registered: bool = True, host: str | None = None):
        if tmp_path is None:
            raise ValueError("tmp_path is required")
        self.user = user
        self.password = password
        self.registrar = registrar
        self.name = name or f"baresip-{user}"
        self.dir = Path(tmp_path) / self.name
        self.config_dir = self.dir / "config"
        self.snd_dir = self.dir / "snd"
        self.record_to_wav = Path(record_to_wav) if record_to_wav else None
        self.auto_answer = auto_answer
        self.extra_config = extra_config
        self.register_timeout = register_timeout
        self.wait_registered = wait_registered
        self.host = host = host or LOCALHOST  # "::1": SIP and RTP over IPv6 (baresip -6); ctrl_tcp stays on 127.0.0.1
        # baresip also listens for SIP over TLS on the next port (TCP): that one must be free
        # too, or baresip exits at start ("SIP/TLS transport failed: Address already in use").
        self.sip_port = next(p for p in (free_port("both", host) for _ in range(200))
                             if _can_bind(p + 1, socket.SOCK_STREAM, host))
        self.sip_address = hostport(host, self.sip_port)
        self.ctrl_port = next(p for p in (free_port("tcp") for _ in range(200)) if p != self.sip_port + 1)
        self.rtp_low, self.rtp_high = free_port_range(10, host)
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.snd_dir.mkdir(parents=True, exist_ok=True)
        if audio_source_wav is None:
            audio_source_wav = make_tone_wav(self.dir / "source.wav", tone_hz or 0, BARESIP_SOURCE_SECONDS)
        self.audio_source_wav = Path(audio_source_wav)
        self._proc: _Process | None = None
        self._sock: socket.socket | None = None
        self._events: list[dict] = []
        self._consumed: set[int] = set()
        self._responses: "queue.Queue[dict]" = queue.Queue()
        self._cond = threading.Condition()
        self._cmd_lock = threading.Lock()
        self._reader: threading.Thread | None = None

    # -- config --
    @property
    def aor(self) -> str:
        domain = self.registrar or self.sip_address
        return f"sip:{self.user}@{domain}"

    def _account_line(self) -> str:
        params = [f"answermode={'auto' if self.auto_answer else 'manual'}"]
        if self.password:
            params.append(f"auth_pass={self.password}")
        params.append("regint=3600" if self.registrar else "regint=0")
        params.append("ptime=20")
        params.append("audio_codecs=PCMU")
        return f"<{self.aor}>;" + ";".join(params)

    def _config_text(self) -> str:
        return "\n".join([
            "poll_method\t\tpoll",
            f"sip_listen\t\t{self.sip_address}",
            f"net_interface\t\t{self.host}",  # 'lo' is rejected by baresip 1.0; the address works
            *(["net_prefer_ipv6\t\tyes"] if ":" in self.host else []),
            "sip_trans_def\t\tudp",
            f"audio_source\t\taufile,{self.audio_source_wav}",
            "audio_player\t\taubridge,nil",  # no sound card: a player that drops frames
            "audio_alert\t\taubridge,nil",
            "audio_level\t\tno",
            "ausrc_srate\t\t8000",
            "auplay_srate\t\t8000",
            "ausrc_channels\t\t1",
            "auplay_channels\t\t1",
            f"rtp_ports\t\t{self.rtp_low}-{self.rtp_high}",
            "rtcp_mux\t\tno",
            "jitter_buffer_delay\t1-5",
            "module_path\t\t/usr/lib/baresip/modules",
            "module\t\t\tg711.so",
            "module\t\t\taufile.so",
            "module\t\t\taubridge.so",
            "module\t\t\tsndfile.so",
            "module_app\t\taccount.so",
            "module_app\t\tmenu.so",
            "module_app\t\tctrl_tcp.so",
            f"ctrl_tcp_listen\t\t{LOCALHOST}:{self.ctrl_port}",
            f"snd_path\t\t{self.snd_dir}",
            "menu_bell\t\tno",
            "ringback_disabled\tyes",
            "statmode_default\toff",
            self.extra_config,
            "",
        ])

    # -- lifecycle --
    def start(self) -> "Baresip":
        """Write the config, start ``baresip -f DIR``, connect to ctrl_tcp, and wait for registration."""
        (self.config_dir / "config").write_text(self._config_text())
        (self.config_dir / "accounts").write_text(self._account_line() + "\n")
        (self.config_dir / "contacts").write_text("")
        exe = shutil.which("baresip") or "baresip"
        family = ["-6"] if ":" in self.host else []  # IPv6 only: its one local address is then ::1
        self._proc = _Process([exe, *family, "-f", str(self.config_dir)], self.dir / "baresip.log", cwd=self.dir)
        deadline = time.monotonic() + BARESIP_READY_TIMEOUT_S
        while True:
            if not self._proc.alive():
                raise RuntimeError(f"baresip exited early:\n{self.logs()}")
            try:
                self._sock = socket.create_connection((LOCALHOST, self.ctrl_port), timeout=0.5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"baresip ctrl_tcp did not open:\n{self.logs()}")
                time.sleep(0.05)
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read_loop, name=f"{self.name}-ctrl", daemon=True)
        self._reader.start()
        if self.registrar and self.wait_registered:
            # The REGISTER_OK event may fire before ctrl_tcp is connected: poll `reginfo` instead.
            try:
                wait_until(self.is_registered, self.register_timeout, interval=0.1, what="registration")
            except TimeoutError:
                raise TimeoutError(f"{self.name} did not register with {self.registrar}:\n{self.logs()}") from None
        return self

    def __enter__(self) -> "Baresip":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Quit baresip (SIGTERM, then SIGKILL); copies the last received audio to ``record_to_wav``."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._proc is not None:
            # On SIGTERM baresip un-registers and waits for the answer; don't wait long for a gone registrar.
            self._proc.stop(2)
        if self.record_to_wav and not self.record_to_wav.exists():
            with contextlib.suppress(FileNotFoundError, TimeoutError):
                self.heard_wav(timeout=0)

    def logs(self) -> str:
        """baresip's console output (its log)."""
        return self._proc.logs() if self._proc else ""

    # -- control --
    def _read_loop(self) -> None:
        buf = b""
        sock = self._sock
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while True:
                colon = buf.find(b":")
                if colon < 0:
                    break
                try:
                    length = int(buf[:colon])
                except ValueError:
                    buf = b""
                    break
                if len(buf) < colon + 1 + length + 1:
                    break
                payload = buf[colon + 1 : colon + 1 + length]
                buf = buf[colon + 1 + length + 1 :]
                try:
                    msg = json.loads(payload)
                except ValueError:
                    continue
                if msg.get("response"):
                    self._responses.put(msg)
                elif msg.get("event"):
                    msg["_t"] = time.monotonic()
                    with self._cond:
                        self._events.append(msg)
                        self._cond.notify_all()

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict:
        """Send a long command over ctrl_tcp (e.g. "dial", "hangup", "accept", "sndcode") and return its
        response ``{"response": true, "ok": bool, "data": str, "token": str}``."""
        if self._sock is None:
            raise RuntimeError("baresip is not running")
        with self._cmd_lock:
            token = uuid.uuid4().hex[:8]
            msg = {"command": command, "params": params, "token": token}
            self._sock.sendall(_netstring(json.dumps(msg).encode()))
            deadline = time.monotonic() + timeout
            while True:
                try:
                    resp = self._responses.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    raise TimeoutError(f"baresip: no response to {command!r}") from None
                if resp.get("token") in (token, None):
                    return resp

    def is_registered(self) -> bool:
        """True if baresip's ``reginfo`` shows the account registered (status OK)."""
        data = self.command("reginfo").get("data", "")
        return any(self.user in line and "OK" in line for line in data.splitlines())

    def dial(self, uri: str) -> dict:
        """Call ``uri``: a full SIP URI, or a bare number/extension, sent to the registrar
        (``sip:NUMBER@REGISTRAR``; without a registrar, a bare number is an error)."""
        if not uri.startswith(("sip:", "sips:")):
            if "@" not in uri:
                if not self.registrar:
                    raise ValueError(f"dial({uri!r}): a bare number needs a registrar; give a sip: URI")
                uri = f"{uri}@{self.registrar}"
            uri = "sip:" + uri
        resp = self.command("dial", uri)
        if not resp.get("ok", True):
            raise RuntimeError(f"baresip dial {uri} failed: {resp}")
        return resp

    def accept(self) -> dict:
        """Answer the ringing incoming call (with ``auto_answer=False``)."""
        return self.command("accept")

    def hangup(self) -> dict:
        """Hang up (or cancel, or reject) the current call."""
        return self.command("hangup")

    def send_dtmf(self, digits: str, gap: float = 0.25) -> None:
        """Send ``digits`` as RFC 4733 telephone-events (baresip uses PT 101 when the far end offered it).

        One ``sndcode`` command per digit (key press + release), ``gap`` seconds apart,
        so the events don't merge.  Each event is short (key released at once).
        """
        for i, d in enumerate(digits):
            if i:
                time.sleep(gap)
            resp = self.command("sndcode", d)
            if not resp.get("ok", False):
                raise RuntimeError(f"sndcode {d!r} failed: {resp}")

    # -- events --
    def events(self, kind: str | None = None) -> list[dict]:
        """All ctrl_tcp events so far (optionally of one kind), consumed or not."""
        t = self.EVENT_ALIASES.get(kind, kind) if kind else None
        with self._cond:
            return [e for e in self._events if t is None or e.get("type") == t]

    def wait_for(self, event: str, timeout: float = 10.0) -> dict:
        """Wait for the next not-yet-consumed event of this kind and consume it; return it.

        ``event``: an alias ("registered", "incoming", "established", "closed", ...) or a raw
        type ("CALL_CLOSED"). Raises TimeoutError with the recent log on timeout.
        """
        wanted = self.EVENT_ALIASES.get(event, event)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, e in enumerate(self._events):
                    if i not in self._consumed and e.get("type") == wanted:
                        self._consumed.add(i)
                        return e
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [e.get("type") for e in self._events]
                    raise TimeoutError(f"{self.name}: no {wanted} within {timeout}s; events: {seen}\n"
                                       f"log tail:\n{self.logs()[-3000:]}")
                self._cond.wait(remaining)

    def received_digits(self) -> str:
        """DTMF digits baresip received (RFC 4733 events, from CALL_DTMF_START events), in order."""
        return "".join(e.get("param", "?") for e in self.events("dtmf"))

    # -- audio --
    def dumps(self, kind: str = "dec") -> list[Path]:
        """sndfile dumps: "dec" (received) or "enc" (sent), oldest first."""
        return sorted(self.snd_dir.glob(f"dump-*-{kind}.wav"), key=lambda p: (p.stat().st_mtime, p.name))

    def heard_wav(self, timeout: float = 5.0) -> Path:
        """What the phone received in its last call, as a WAV (8 kHz mono S16), once that call has closed.

        Waits (up to ``timeout`` s) until there is a dump and as many CALL_CLOSED events as dumps,
        then copies the newest dump to ``record_to_wav`` if given and returns that path (else the
        dump's own path).  Events are not consumed.
        """
        def ready():
            dumps = self.dumps("dec")
            return dumps and len(self.events("closed")) >= len(dumps) and dumps[-1]
        path = wait_until(ready, max(timeout, 0.1), what=f"{self.name}: a closed call's sndfile dump")
        time.sleep(0.2)  # the dump is finalised as the call's audio stream is torn down
        if self.record_to_wav:
            shutil.copyfile(path, self.record_to_wav)
            return self.record_to_wav
        return path


# ---------------------------------------------------------------------------
# SIPp.


@dataclass
class SippResult:
    """The outcome of a SIPp run: exit code, its error log, message trace and screen output."""

    returncode: int
    errors: str
    messages: str
    screen: str
    argv: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> "SippResult":
        """Raise AssertionError with the error log and the last messages unless SIPp exited 0."""
        if not self.ok:
            raise AssertionError(
                f"sipp exited {self.returncode}\nargv: {' '.join(self.argv)}\n--- errors ---\n{self.errors[-4000:]}\n"
                f"--- messages (tail) ---\n{self.messages[-4000:]}\n--- screen (tail) ---\n{self.screen[-2000:]}")
        return self


class Sipp:
    """One SIPp run of a scenario from ``tests/e2e/scenarios`` (or any path), as UAC or UAS.

    UAC when ``remote`` ("ip:port") is given, else UAS (listening on ``port``).
    The scenario is a template: every ``@@name@@`` is replaced from ``params``
    (defaults: ``pcap`` a 3 s 440 Hz PCMU pcap, ``pause_ms`` 4000,
    ``media_port`` SIPp's own ``-mp`` port, ``caller`` "447700900000",
    ``status`` 486, ``ring_ms`` 1000, ``user`` "alice", ``password`` "secret");
    ``media_port`` (keyword) is the port the scenario's SDP advertises: pass an
    :class:`RtpEndpoint`'s port to observe what the far end sends (SIPp itself
    then only does signalling and, with play_pcap_audio, sends from its own port,
    which is *not* the SDP port: a peer that latches onto the RTP source would then
    send to SIPp, not to the endpoint).  ``params={"pcap": None}`` drops the
    play_pcap_audio step: let the RtpEndpoint send too, to :meth:`remote_media`,
    so everything the trunk side sends and receives uses the SDP port;
    the filled copy goes to ``tmp_path``.  ``service`` is SIPp's ``-s`` (the
    Request-URI user).  SIPp runs with ``-m calls``, ``-nostdin``,
    ``-trace_err``/``-trace_msg`` into ``tmp_path``, ``-timeout``/``-timeout_error``
    so a hung scenario fails instead of hanging.

    ``start()`` returns at once (for UAS: when the SIP port is bound);
    ``wait()`` returns a :class:`SippResult`; ``run()`` is both.
    """

    DEFAULT_PARAMS = {
        "pause_ms": 4000,
        "audio_pt": 0,  # uac_call.xml's codec: PCMU unless a test offers PCMA only (8, "PCMA")
        "audio_codec": "PCMU",
        "caller": "447700900000",
        "status": 486,
        "ring_ms": 1000,
        "user": "alice",
        "password": "secret",
    }
    _counter = itertools.count()

    def __init__(self, scenario: str | Path, tmp_path: Path, *, remote: str | None = None, service: str = "service",
                 port: int | None = None, media_port: int | None = None, params: Mapping[str, Any] | None = None,
                 calls: int = 1, timeout: float = 20.0, extra_args: Sequence[str] = ()):
        self.tmp_path = Path(tmp_path)
        path = Path(scenario)
        self.scenario = path if path.is_absolute() or path.exists() else SCENARIOS_DIR / path
        self.remote = remote
        self.service = service
        self.port = port or free_port("udp")
        self.address = f"{LOCALHOST}:{self.port}"
        # SIPp binds -mp (audio) and -mp+2 (video) itself, even with no rtp_echo: keep it apart
        # from the SDP port, which may point at an RtpEndpoint.
        self.sipp_media_port = free_port_range(4)[0]
        self.calls = calls
        self.timeout = timeout
        self.extra_args = list(extra_args)
        self.params = dict(self.DEFAULT_PARAMS)
        self.params["media_port"] = media_port or "[media_port]"
        self.params.update(params or {})
        n = next(self._counter)
        self.stem = f"sipp-{self.scenario.stem}-{n}"
        if "@@pcap@@" in self.scenario.read_text() and "pcap" not in (params or {}):
            self.params["pcap"] = pcapmod.write_pcap(self.tmp_path / f"{self.stem}-default.pcap")
        self._proc: _Process | None = None

    _PLAY_BLOCK = re.compile(r"\s*<nop>\s*<action>\s*<exec play_pcap_audio=\"@@pcap@@\"/>\s*</action>\s*</nop>")

    def _render(self) -> Path:
        text = self.scenario.read_text()
        if "pcap" in self.params and self.params["pcap"] is None:
            text = self._PLAY_BLOCK.sub("", text)
        for k, v in self.params.items():
            text = text.replace(f"@@{k}@@", str(v))
        left = re.findall(r"@@(\w+)@@", text)
        if left:
            raise ValueError(f"{self.scenario.name}: no value for {sorted(set(left))}")
        out = self.tmp_path / f"{self.stem}.xml"
        out.write_text(text)
        return out

    def argv(self) -> list[str]:
        sf = self._render()
        exe = shutil.which("sipp") or "sipp"
        argv = [exe]
        if self.remote:
            argv.append(self.remote)
        argv += [
            "-sf", str(sf), "-s", self.service, "-m", str(self.calls),
            "-i", LOCALHOST, "-p", str(self.port), "-t", "u1",
            "-mi", LOCALHOST, "-mp", str(self.sipp_media_port),
            "-cp", str(free_port("udp")),
            "-nostdin",
            "-trace_err", "-error_file", str(self.tmp_path / f"{self.stem}-errors.log"),
            "-trace_msg", "-message_file", str(self.tmp_path / f"{self.stem}-messages.log"),
            "-timeout", f"{int(self.timeout)}s", "-timeout_error",
            "-max_recv_loops", "1000",
            *self.extra_args,
        ]
        return argv

    def start(self) -> "Sipp":
        for suffix in ("errors", "messages"):
            (self.tmp_path / f"{self.stem}-{suffix}.log").unlink(missing_ok=True)
        self._argv = self.argv()
        self._proc = _Process(self._argv, self.tmp_path / f"{self.stem}-screen.log", cwd=self.tmp_path)
        if not self.remote:  # UAS: ready when the SIP port is bound
            wait_until(lambda: not _can_bind(self.port) or not self._proc.alive(), 5.0, what="sipp to bind")
            if not self._proc.alive():
                raise RuntimeError(f"sipp exited at start:\n{self._proc.logs()}")
        return self

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to finish (default bound: its own -timeout + 5 s); kill it if it overruns."""
        assert self._proc is not None, "start() first"
        try:
            self._proc.proc.wait(timeout if timeout is not None else self.timeout + 5)
        except subprocess.TimeoutExpired:
            self._proc.kill9()
        self._proc.stop(1)
        read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
        return SippResult(
            returncode=self._proc.proc.returncode,
            errors=read(self.tmp_path / f"{self.stem}-errors.log"),
            messages=read(self.tmp_path / f"{self.stem}-messages.log"),
            screen=self._proc.logs(),
            argv=self._argv,
        )

    def received_messages(self) -> list[str]:
        """The SIP messages SIPp received so far, in order (from its -trace_msg log)."""
        path = self.tmp_path / f"{self.stem}-messages.log"
        if not path.exists():
            return []
        blocks = re.split(r"^-{20,} .*$", path.read_text(errors="replace"), flags=re.M)
        out = []
        for b in blocks:
            head, _, body = b.strip("\n").partition("\n")
            if "message received" in head:
                out.append(body.strip("\n"))
        return out

    def remote_media(self, timeout: float = 5.0) -> tuple[str, int]:
        """(ip, port) of the audio in the last SDP SIPp received (the peer's RTP address),
        waiting up to ``timeout`` s for one. For :meth:`RtpEndpoint.send`'s ``remote``."""
        def find():
            for msg in reversed(self.received_messages()):
                m = re.search(r"^m=audio (\d+) ", msg, re.M)
                c = re.search(r"^c=IN IP4 (\S+)", msg, re.M)
                if m and c:
                    return c.group(1), int(m.group(1))
            return None
        return wait_until(find, timeout, what="an SDP received by sipp")

    def run(self) -> SippResult:
        """start() then wait()."""
        return self.start().wait()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop(2)

    def __enter__(self) -> "Sipp":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# A Python RTP endpoint.


@dataclass(frozen=True)
class ReceivedPacket:
    """One RTP packet as received: arrival time (monotonic s), source, header fields, payload."""

    arrival: float
    source: tuple[str, int]
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


class RtpEndpoint:
    """A UDP socket on 127.0.0.1 (even port) that records RTP and can send RTP.

    Receiving: every packet is kept (:attr:`packets`); :meth:`audio` decodes
    the PCMU ones onto a timeline built from RTP timestamps (per SSRC; a new
    SSRC is placed by its arrival time), so gaps are silence; :meth:`digits`
    lists the RFC 4733 events received.

    Sending: :meth:`send` paces a packet train (:func:`tests.e2e.pcap.build_stream`)
    in a thread to ``remote``, or, if no remote is set, to the source of the
    first packet received (symmetric RTP: the B2BUA sends from the port it
    advertises). :meth:`send_tone` is the shortcut.

    Put ``ep.port`` in SDP (e.g. ``Sipp(..., params={"media_port": ep.port})``).
    """

    def __init__(self, port: int | None = None, remote: tuple[str, int] | None = None, host: str | None = None):
        self.host = host = host or LOCALHOST  # "::1": an IPv6 endpoint
        self.sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        if port is None:
            for _ in range(50):
                port = free_udp_port_pair(host)
                try:
                    self.sock.bind((host, port))
                    break
                except OSError:
                    continue
        else:
            self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.remote = remote
        self.packets: list[ReceivedPacket] = []
        self._lock = threading.Lock()
        self._running = True
        self._senders: list[threading.Thread] = []
        self.sent_count = 0
        self.sock.settimeout(0.2)
        self._thread = threading.Thread(target=self._recv_loop, name=f"rtp-{self.port}", daemon=True)
        self._thread.start()

    def _recv_loop(self) -> None:
        while self._running:
            try:
                data, addr = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                if not self._running:
                    break
                continue  # e.g. ICMP port unreachable reported on a later recv
            now = time.monotonic()
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            cc = data[0] & 0x0F
            off = 12 + 4 * cc
            if data[0] & 0x10 and len(data) >= off + 4:  # header extension
                off += 4 + 4 * int.from_bytes(data[off + 2 : off + 4], "big")
            payload = data[off:]
            if data[0] & 0x20 and payload:  # padding
                payload = payload[: -payload[-1]]
            pkt = ReceivedPacket(now, addr, data[1] & 0x7F, bool(data[1] & 0x80), int.from_bytes(data[2:4], "big"),
                                 int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big"), payload)
            with self._lock:
                self.packets.append(pkt)

    # -- receive side --
    def received(self, payload_type: int | None = None) -> list[ReceivedPacket]:
        """Packets received so far (optionally of one payload type)."""
        with self._lock:
            return [p for p in self.packets if payload_type is None or p.payload_type == payload_type]

    def wait_for_packets(self, count: int = 1, timeout: float = 5.0, payload_type: int | None = None) -> list[ReceivedPacket]:
        """Wait until at least ``count`` packets (of that PT) arrived."""
        return wait_until(lambda: len(self.received(payload_type)) >= count and self.received(payload_type),
                          timeout, what=f"{count} RTP packet(s) on port {self.port}")

    def audio(self, rate: int = pcapmod.SAMPLE_RATE, payload_type: int = pcapmod.PT_PCMU) -> np.ndarray:
        """Received G.711 audio (PCMU, or ``payload_type`` PT_PCMA) as float samples in [-1, 1],
        positioned by RTP timestamp (gaps are silence).

        Time 0 is the first received packet.  Packets of a new SSRC are placed at
        their arrival time relative to the first packet.
        """
        pkts = self.received(payload_type)
        decode = pcapmod.DECODERS[payload_type]
        if not pkts:
            return np.zeros(0)
        t0 = pkts[0].arrival
        bases: dict[int, tuple[int, int]] = {}  # ssrc -> (first ts, sample offset)
        chunks = []
        for p in pkts:
            if p.ssrc not in bases:
                bases[p.ssrc] = (p.timestamp, int(round((p.arrival - t0) * rate)))
            ts0, off = bases[p.ssrc]
            delta = (p.timestamp - ts0) & 0xFFFFFFFF
            if delta >= 0x80000000:
                delta -= 0x100000000
            pos = off + delta
            if pos >= 0:
                chunks.append((pos, decode(p.payload)))
        end = max(pos + len(s) for pos, s in chunks)
        out = np.zeros(end, dtype=np.float64)
        for pos, s in chunks:
            out[pos : pos + len(s)] = s / 32768.0
        return out

    def digits(self, payload_type: int = pcapmod.PT_TELEPHONE_EVENT) -> str:
        """The DTMF digits received as RFC 4733 events, in order (one per event, i.e. per RTP timestamp)."""
        names = {v: k for k, v in pcapmod.DTMF_EVENT_CODES.items()}
        seen: list[tuple[int, int]] = []
        out = []
        for p in self.received(payload_type):
            if len(p.payload) < 4:
                continue
            key = (p.ssrc, p.timestamp)
            if key in seen:
                continue
            seen.append(key)
            out.append(names.get(p.payload[0], "?"))
        return "".join(out)

    def write_wav(self, path: str | Path) -> Path:
        """Write :meth:`audio` to a mono 8 kHz 16-bit WAV (for eyeballing failures)."""
        import soundfile
        soundfile.write(str(path), self.audio(), pcapmod.SAMPLE_RATE, subtype="PCM_16")
        return Path(path)

    # -- send side --
    def send(self, packets: Sequence[pcapmod.RtpPacket], remote: tuple[str, int] | None = None,
             latch_timeout: float = 5.0) -> threading.Thread:
        """Send a packet train in a background thread, paced by ``packet.t``; returns the thread.

        The train can be edited first to simulate the network, e.g. loss:
        ``ep.send([p for i, p in enumerate(build_stream(...)) if not 50 <= i < 60])``,
        or reordering (swap two list items: they keep their send times' order).

        Destination: ``remote``, else :attr:`remote`, else the source of the first received packet
        (waited for up to ``latch_timeout`` s).
        """
        def run():
            dest = remote or self.remote
            if dest is None:
                first = self.wait_for_packets(1, latch_timeout)[0]
                dest = first.source
            start = time.monotonic()
            for p in packets:
                delay = start + p.t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if not self._running:
                    return
                with contextlib.suppress(OSError):
                    self.sock.sendto(p.data, dest)
                    self.sent_count += 1
        t = threading.Thread(target=run, name=f"rtp-send-{self.port}", daemon=True)
        t.start()
        self._senders.append(t)
        return t

    def send_tone(self, freq: float, seconds: float, digits: Iterable[pcapmod.Digit] = (), **kw) -> threading.Thread:
        """Send a PCMU sine (with optional RFC 4733 digits overlaid) in the background."""
        return self.send(pcapmod.build_stream([pcapmod.Tone(freq, seconds)], digits, ssrc=random.getrandbits(32)), **kw)

    def close(self) -> None:
        self._running = False
        for t in self._senders:
            t.join(1)
        self._thread.join(1)
        self.sock.close()

    def __enter__(self) -> "RtpEndpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------
# pyVoIP.


class PyVoipPhone:
    """A pyVoIP 1.6.8 phone: registers with ``server`` ("ip:port"), auto-answers, plays a tone, records.

    pyVoIP's quirks, which this wrapper absorbs or documents:

    - ``start()`` registers synchronously and raises if the registrar does not answer 200
      (possibly after a 401 challenge); it re-registers every ~115 s.
    - It sends every SIP message (180/200, BYE, ACK) to the *server* address, never to the
      Via/Contact: it only works behind a proxy/B2BUA (or a SIPp that also plays registrar).
    - It rings (180) at once and calls our callback after a fixed 1 s Timer; we answer there.
    - Its audio API is 8-bit unsigned linear (128 = silence); we convert to/from float.
    - It needs its own RTP port range; we give it a small free one.
    - Its parser ignores requests it does not know (OPTIONS, INFO...) without answering.
    - It hears RFC 4733 digits (PT 101 offered by it) via :meth:`digits`.
    """

    def __init__(self, user: str, password: str, server: str, *, tone_hz: float | None = None,
                 tone_seconds: float = 30.0, answer: bool = True):
        from pyVoIP.VoIP import VoIPPhone  # imported lazily: test-only dependency

        self.user = user
        host, port = split_hostport(server)
        self.sip_port = free_port("udp")
        low, high = free_port_range(10)
        self.tone_hz = tone_hz
        self.tone_seconds = tone_seconds
        self.answer = answer
        self.calls: list[Any] = []
        self._heard: list[bytes] = []
        self._digits: list[str] = []
        self._lock = threading.Lock()
        self._answered = threading.Event()
        self._threads: list[threading.Thread] = []
        self.phone = VoIPPhone(host, port, user, password, myIP=LOCALHOST, callCallback=self._on_call,
                               sipPort=self.sip_port, rtpPortLow=low, rtpPortHigh=high)

    def start(self) -> "PyVoipPhone":
        """Register (blocking; raises on failure)."""
        self.phone.start()
        return self

    def __enter__(self) -> "PyVoipPhone":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _on_call(self, call) -> None:
        self.calls.append(call)
        if not self.answer:
            return
        try:
            call.answer()
        except Exception:  # the caller may have cancelled during pyVoIP's 1 s delay
            return
        self._answered.set()
        if self.tone_hz is not None:
            n = int(self.tone_seconds * pcapmod.SAMPLE_RATE)
            t = np.arange(n) / pcapmod.SAMPLE_RATE
            x = 0.5 * np.sin(2 * np.pi * self.tone_hz * t) if self.tone_hz else np.zeros(n)
            call.write_audio((np.round(x * 127) + 128).astype(np.uint8).tobytes())
        th = threading.Thread(target=self._reader, args=(call,), daemon=True, name=f"pyvoip-{self.user}-read")
        th.start()
        self._threads.append(th)

    def _reader(self, call) -> None:
        from pyVoIP.VoIP import CallState

        while call.state == CallState.ANSWERED:
            # Non-blocking reads pad with 0x80 (silence) past the received data; strip the padding.
            data = call.read_audio(160, blocking=False).rstrip(b"\x80")
            if data:
                with self._lock:
                    self._heard.append(data)
            d = call.get_dtmf(1)
            if d:
                with self._lock:
                    self._digits.append(d)
            time.sleep(0.02)

    def wait_answered(self, timeout: float = 5.0) -> None:
        """Wait until a call has been answered (pyVoIP waits 1 s before our callback)."""
        if not self._answered.wait(timeout):
            raise TimeoutError(f"pyVoIP {self.user}: no call answered within {timeout}s")

    def wait_ended(self, timeout: float = 10.0) -> None:
        """Wait until the last call has ended (BYE received or hung up)."""
        from pyVoIP.VoIP import CallState
        wait_until(lambda: self.calls and self.calls[-1].state == CallState.ENDED, timeout, what="pyVoIP call end")

    def heard(self) -> np.ndarray:
        """What the phone received, as float samples (pyVoIP's 8-bit audio, read in 20 ms polls:
        timing is approximate, good for frequency checks)."""
        with self._lock:
            raw = b"".join(self._heard)
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0

    def digits(self) -> str:
        """DTMF digits pyVoIP decoded from RFC 4733 events."""
        with self._lock:
            return "".join(self._digits)

    def hangup(self) -> None:
        """Hang up the last call (sends BYE)."""
        if self.calls:
            self.calls[-1].hangup()

    def stop(self, timeout: float = 3.0) -> None:
        """Hang up and stop; bounded (pyVoIP's deregistration can wait 30 s on a silent registrar)."""
        th = threading.Thread(target=self._stop_quietly, daemon=True, name=f"pyvoip-{self.user}-stop")
        th.start()
        th.join(timeout)

    def _stop_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.phone.stop()


# ---------------------------------------------------------------------------
# A Python SIP trunk (raw SIP over UDP).

_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact", "l": "content-length",
            "c": "content-type", "k": "supported"}

SIP_T1_S = 0.5
"""RFC 3261 T1: the first retransmission interval for requests over UDP."""


@dataclass
class SipMessage:
    """A parsed SIP message: request (``method``, ``uri``) or response (``status``, ``reason``).

    ``headers`` is a list of (lower-case name, value) in order; compact names are expanded.
    """

    start: str
    headers: list[tuple[str, str]]
    body: str = ""
    source: tuple[str, int] | None = None
    arrival: float = 0.0

    @classmethod
    def parse(cls, data: bytes, source: tuple[str, int] | None = None) -> "SipMessage":
        text = data.decode("utf-8", errors="replace")
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in " \t" and headers:  # folded line
                name, value = headers[-1]
                headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers.append((_COMPACT.get(name, name), value.strip()))
        msg = cls(lines[0], headers, body, source, time.monotonic())
        length = msg.header("content-length")
        if length is not None and length.isdigit():
            msg.body = body.encode()[: int(length)].decode("utf-8", errors="replace")
        return msg

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0] if self.is_request else self.cseq[1]

    @property
    def uri(self) -> str:
        return self.start.split(" ")[1]

    @property
    def status(self) -> int:
        return int(self.start.split(" ")[1]) if not self.is_request else 0

    @property
    def cseq(self) -> tuple[int, str]:
        n, _, m = (self.header("cseq") or "0 X").partition(" ")
        return int(n), m.strip()

    @property
    def call_id(self) -> str:
        return self.header("call-id") or ""

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or None."""
        name = _COMPACT.get(name.lower(), name.lower())
        return next((v for n, v in self.headers if n == name), None)

    def all(self, name: str) -> list[str]:
        name = _COMPACT.get(name.lower(), name.lower())
        return [v for n, v in self.headers if n == name]

    def tag(self, header: str) -> str | None:
        m = re.search(r";\s*tag=([^;>\s]+)", self.header(header) or "")
        return m.group(1) if m else None

    def sdp_media(self) -> tuple[str, int] | None:
        """(ip, port) of the audio in the SDP body, or None."""
        m = re.search(r"^m=audio (\d+) ", self.body, re.M)
        c = re.search(r"^c=IN IP[46] (\S+)", self.body, re.M)
        return (c.group(1), int(m.group(1))) if m and c else None

    def __str__(self) -> str:
        return self.start


def _sdp(port: int, session: int, host: str | None = None) -> str:
    host = host or LOCALHOST
    family = "IP6" if ":" in host else "IP4"
    return (f"v=0\r\no=pytrunk {session} {session} IN {family} {host}\r\ns=-\r\nc=IN {family} {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            "a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n")


class PyTrunkCall:
    """One call (dialog) of a :class:`PyTrunk`, in either direction.

    Its media is an :class:`RtpEndpoint` (:attr:`rtp`) whose port is in our SDP; :attr:`remote_media`
    is the far end's SDP address, so ``call.rtp.send_tone(440, 3, remote=call.remote_media)`` sends
    from the advertised port.  :attr:`state`: "calling", "ringing", "early", "confirmed",
    "terminated"; :attr:`final_status` is the INVITE's final status (outgoing) or what we answered.
    """

    def __init__(self, trunk: "PyTrunk", call_id: str, outgoing: bool, peer: tuple[str, int]):
        self.trunk = trunk
        self.call_id = call_id
        self.outgoing = outgoing
        self.peer = peer
        self.rtp = RtpEndpoint(host=trunk.host)
        self.local_tag = uuid.uuid4().hex[:10]
        self.remote_tag: str | None = None
        self.state = "calling" if outgoing else "ringing"
        self.final_status: int | None = None
        self.remote_media: tuple[str, int] | None = None
        self.invite: SipMessage | None = None  # incoming calls: the INVITE received
        self.final_response: SipMessage | None = None  # outgoing calls: the INVITE's final response
        self.responses: list[SipMessage] = []
        self.ended_by: str | None = None  # "us" or "them"
        self._cseq = 1
        self._cond = threading.Condition()
        # set for outgoing calls:
        self.request_uri = ""
        self.from_hdr = ""
        self.to_hdr = ""
        self.remote_target = ""
        self.branch = ""
        self._invite_text = ""

    # -- waiting --
    def _wait(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"pytrunk call {self.call_id}: timed out waiting for {what} "
                                       f"(state {self.state}, responses {[str(r) for r in self.responses]})")
                self._cond.wait(left)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_answered(self, timeout: float = 10.0) -> int:
        """Wait for the INVITE's final response; return its status (200 when answered)."""
        self._wait(lambda: self.final_status is not None, timeout, "a final response")
        return self.final_status

    def wait_status(self, status: int, timeout: float = 10.0) -> SipMessage:
        """Wait until a response with ``status`` (e.g. 180) arrived for the INVITE."""
        self._wait(lambda: any(r.status == status for r in self.responses), timeout, f"a {status}")
        return next(r for r in self.responses if r.status == status)

    def wait_ended(self, timeout: float = 10.0) -> None:
        """Wait until the call is terminated (BYE either way, CANCEL, or a failure response)."""
        self._wait(lambda: self.state == "terminated", timeout, "the call to end")

    # -- outgoing-side actions --
    def cancel(self) -> None:
        """CANCEL the outgoing INVITE (before a final response)."""
        via = f"SIP/2.0/UDP {self.trunk.address};branch={self.branch};rport"
        self.trunk._send_raw(self.peer, (
            f"CANCEL {self.request_uri} SIP/2.0\r\nVia: {via}\r\nFrom: {self.from_hdr}\r\nTo: {self.to_hdr}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"))

    # -- incoming-side actions --
    def _respond(self, req: SipMessage, status: int, reason: str, body: str = "", tag: bool = True) -> None:
        self.trunk._respond(req, status, reason, body=body, to_tag=self.local_tag if tag else None)

    def ring(self) -> None:
        """Send 180 Ringing to the received INVITE."""
        self._respond(self.invite, 180, "Ringing")

    def answer(self) -> None:
        """Send 200 OK with our SDP to the received INVITE (retransmitted until ACK)."""
        self.state = "confirmed"
        self.final_status = 200
        body = _sdp(self.rtp.port, random.getrandbits(31), self.trunk.host)
        self.trunk._respond_reliably(self, self.invite, 200, "OK", body)
        self._notify()

    def reject(self, status: int = 486, reason: str = "Busy Here") -> None:
        """Send a final failure response to the received INVITE."""
        self.final_status = status
        self._respond(self.invite, status, reason)
        self.state = "terminated"
        self._notify()

    # -- both --
    def bye(self, timeout: float = 5.0) -> int:
        """Send BYE (retransmitted); return the response status (0 if none)."""
        self._cseq += 1
        if self.outgoing:
            from_hdr, to_hdr, target = self.from_hdr, f"{self.to_hdr};tag={self.remote_tag}", self.remote_target
        else:
            inv = self.invite
            from_hdr = f"{inv.header('to')};tag={self.local_tag}"
            to_hdr = inv.header("from")
            m = re.search(r"<([^>]+)>", inv.header("contact") or "")
            target = m.group(1) if m else inv.uri
        text = (f"BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {self.trunk.address};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
                f"From: {from_hdr}\r\nTo: {to_hdr}\r\nCall-ID: {self.call_id}\r\nCSeq: {self._cseq} BYE\r\n"
                f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        self.ended_by = "us"
        status = self.trunk._transact(self.peer, text, self.call_id, "BYE", timeout)
        self.state = "terminated"
        self._notify()
        return status


class PyTrunk:
    """A small SIP trunk in Python over UDP: places and receives calls, media via :class:`RtpEndpoint`.

    Simpler-minded than SIPp but tolerant: it answers any in-dialog request it
    does not care about (OPTIONS, INFO, re-INVITE with our SDP, UPDATE) with 200,
    so a scenario doesn't fail on extra messages; every message is kept in
    :attr:`messages` (``("in"|"out", SipMessage)``) for assertions.

    Outgoing: ``call = trunk.call("127.0.0.1:5060", "441632960000")``, then
    ``call.wait_answered()``, ``call.rtp.send_tone(440, 3, remote=call.remote_media)``,
    ``call.bye()``.  Incoming (the B2BUA's outbound calls): ``call = trunk.wait_for_call()``,
    ``call.ring(); call.answer()`` (or ``trunk = PyTrunk(auto_answer=True)``),
    ``call.wait_ended()``.  Use :attr:`address` as the trunk's ``sources``/``uri``.
    """

    def __init__(self, port: int | None = None, *, auto_answer: bool = False, ring_s: float = 0.2,
                 host: str | None = None):
        self.host = host = host or LOCALHOST  # "::1": signalling, SDP and media over IPv6
        self.sock = socket.socket(_family(host), socket.SOCK_DGRAM)
        self.sock.bind((host, port or free_port("both", host)))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.address = hostport(host, self.port)
        self.auto_answer = auto_answer
        self.ring_s = ring_s
        self.calls: dict[str, PyTrunkCall] = {}
        self.messages: list[tuple[str, SipMessage]] = []
        self._incoming: "queue.Queue[PyTrunkCall]" = queue.Queue()
        self._pending: dict[tuple[str, str], "queue.Queue[SipMessage]"] = {}
        self._reliable: dict[str, tuple[str, tuple[str, int]]] = {}
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"pytrunk-{self.port}", daemon=True)
        self._thread.start()

    # -- plumbing --
    def _send_raw(self, dest: tuple[str, int], text: str) -> None:
        with self._lock:
            self.messages.append(("out", SipMessage.parse(text.encode(), None)))
        with contextlib.suppress(OSError):
            self.sock.sendto(text.encode(), dest)

    def _respond(self, req: SipMessage, status: int, reason: str, body: str = "", to_tag: str | None = None) -> None:
        self._send_raw(self._response_dest(req), self._response_text(req, status, reason, body, to_tag))

    @staticmethod
    def _response_dest(req: SipMessage) -> tuple[str, int]:
        return req.source  # symmetric response (RFC 3581 rport behaviour): to where it came from

    def _response_text(self, req: SipMessage, status: int, reason: str, body: str, to_tag: str | None) -> str:
        to = req.header("to") or ""
        if to_tag and ";tag=" not in to:
            to = f"{to};tag={to_tag}"
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in req.all("via")]
        lines += [f"Record-Route: {v}" for v in req.all("record-route")]
        lines += [f"From: {req.header('from')}", f"To: {to}", f"Call-ID: {req.call_id}", f"CSeq: {req.header('cseq')}"]
        if req.method == "INVITE" and 100 < status < 300:
            lines.append(f"Contact: <sip:trunk@{self.address}>")
        if body:
            lines += ["Content-Type: application/sdp", f"Content-Length: {len(body.encode())}", "", body]
            return "\r\n".join(lines)
        lines += ["Content-Length: 0", "", ""]
        return "\r\n".join(lines)

    def _respond_reliably(self, call: PyTrunkCall, req: SipMessage, status: int, reason: str, body: str) -> None:
        text = self._response_text(req, status, reason, body, call.local_tag)
        dest = self._response_dest(req)
        self._reliable[call.call_id] = (text, dest)

        def retransmit():
            interval = SIP_T1_S
            deadline = time.monotonic() + 32 * SIP_T1_S
            while call.call_id in self._reliable and time.monotonic() < deadline and self._running:
                self._send_raw(dest, text)
                time.sleep(interval)
                interval = min(interval * 2, 4.0)
        threading.Thread(target=retransmit, daemon=True).start()

    def _transact(self, dest: tuple[str, int], text: str, call_id: str, method: str, timeout: float) -> int:
        """Send a non-INVITE request with retransmissions; return the final status (0 on timeout)."""
        q: "queue.Queue[SipMessage]" = queue.Queue()
        self._pending[(call_id, method)] = q
        deadline = time.monotonic() + timeout
        interval = SIP_T1_S
        try:
            while time.monotonic() < deadline:
                self._send_raw(dest, text)
                try:
                    while True:
                        r = q.get(timeout=min(interval, max(0.01, deadline - time.monotonic())))
                        if r.status >= 200:
                            return r.status
                except queue.Empty:
                    interval = min(interval * 2, 4.0)
            return 0
        finally:
            self._pending.pop((call_id, method), None)

    def _loop(self) -> None:
        while self._running:
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                if not self._running:
                    return
                continue
            if not data.strip():
                continue  # keep-alive
            try:
                msg = SipMessage.parse(data, addr)
            except Exception:  # noqa: BLE001 - a garbage datagram is ignored
                continue
            with self._lock:
                self.messages.append(("in", msg))
            try:
                if msg.is_request:
                    self._on_request(msg)
                else:
                    self._on_response(msg)
            except Exception as exc:  # noqa: BLE001 - keep the loop alive, but leave a trace
                sys.stderr.write(f"pytrunk: error handling {msg.start}: {exc!r}\n")

    def _on_request(self, req: SipMessage) -> None:
        call = self.calls.get(req.call_id)
        m = req.method
        if m == "INVITE" and call is None:
            call = PyTrunkCall(self, req.call_id, outgoing=False, peer=req.source)
            call.invite = req
            call.remote_tag = req.tag("from")
            call.remote_media = req.sdp_media()
            self.calls[req.call_id] = call
            self._respond(req, 100, "Trying", to_tag=None)
            if self.auto_answer:
                call.ring()
                threading.Timer(self.ring_s, call.answer).start()
            self._incoming.put(call)
        elif m == "INVITE":  # retransmission or re-INVITE
            if req.tag("to") and call.state == "confirmed":
                call.remote_media = req.sdp_media() or call.remote_media
                self._respond(req, 200, "OK", body=_sdp(call.rtp.port, random.getrandbits(31), self.host), to_tag=call.local_tag)
        elif m == "ACK":
            if call:
                self._reliable.pop(call.call_id, None)
        elif m == "BYE":
            self._respond(req, 200, "OK")
            if call:
                call.ended_by = call.ended_by or "them"
                call.state = "terminated"
                self._reliable.pop(call.call_id, None)
                call._notify()
        elif m == "CANCEL":
            self._respond(req, 200, "OK")
            if call and call.final_status is None:
                call.final_status = 487
                self._respond(call.invite, 487, "Request Terminated", to_tag=call.local_tag)
                call.ended_by = "them"
                call.state = "terminated"
                call._notify()
        else:  # OPTIONS, INFO, UPDATE, NOTIFY...: accept
            self._respond(req, 200, "OK")

    def _on_response(self, resp: SipMessage) -> None:
        call = self.calls.get(resp.call_id)
        num, method = resp.cseq
        q = self._pending.get((resp.call_id, method))
        if q is not None and method != "INVITE":
            q.put(resp)
            return
        if call is None or method != "INVITE":
            return
        if call.final_status is not None:
            if resp.status >= 200:  # retransmitted final response: ACK again
                self._ack(call, resp)
            return
        call.responses.append(resp)
        if resp.status < 200:
            if resp.status > 100:
                call.state = "early"
                call.remote_media = resp.sdp_media() or call.remote_media
        else:
            call.final_status = resp.status
            call.remote_tag = resp.tag("to")
            call.final_response = resp
            if resp.status < 300:
                call.state = "confirmed"
                call.remote_media = resp.sdp_media() or call.remote_media
                m = re.search(r"<([^>]+)>", resp.header("contact") or "")
                call.remote_target = m.group(1) if m else call.request_uri
            else:
                call.state = "terminated"
            self._ack(call, resp)
        call._notify()

    def _ack(self, call: PyTrunkCall, resp: SipMessage) -> None:
        to = resp.header("to")
        if resp.status < 300:
            target = call.remote_target or call.request_uri
            branch = "z9hG4bK" + uuid.uuid4().hex[:12]
        else:  # ACK for a failure is part of the INVITE transaction (RFC 3261 §17.1.1.3)
            target, branch = call.request_uri, call.branch
        self._send_raw(call.peer, (
            f"ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP {self.address};branch={branch};rport\r\n"
            f"From: {call.from_hdr}\r\nTo: {to}\r\nCall-ID: {call.call_id}\r\nCSeq: 1 ACK\r\n"
            f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"))

    # -- API --
    def call(self, server: str, number: str, caller: str = "447700900000", *,
             extra_headers: Sequence[str] = ()) -> PyTrunkCall:
        """Send an INVITE for ``number`` to ``server`` ("ip:port") with our SDP; returns the call at once.

        The INVITE is retransmitted (T1 doubling) until a response arrives.
        """
        host, port = split_hostport(server)
        call_id = f"{uuid.uuid4().hex}@{LOCALHOST}"
        call = PyTrunkCall(self, call_id, outgoing=True, peer=(host, port))
        call.request_uri = f"sip:{number}@{server}"
        call.from_hdr = f"<sip:{caller}@{self.address}>;tag={call.local_tag}"
        call.to_hdr = f"<sip:{number}@{server}>"
        call.branch = "z9hG4bK" + uuid.uuid4().hex[:12]
        body = _sdp(call.rtp.port, random.getrandbits(31), self.host)
        text = "\r\n".join([
            f"INVITE {call.request_uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.address};branch={call.branch};rport",
            f"From: {call.from_hdr}", f"To: {call.to_hdr}", f"Call-ID: {call_id}", "CSeq: 1 INVITE",
            f"Contact: <sip:{caller}@{self.address}>", "Max-Forwards: 70", "User-Agent: e2e-pytrunk",
            *extra_headers,
            "Content-Type: application/sdp", f"Content-Length: {len(body.encode())}", "", body])
        self.calls[call_id] = call

        def send_until_response():
            interval = SIP_T1_S
            deadline = time.monotonic() + 32 * SIP_T1_S
            while not call.responses and call.final_status is None and time.monotonic() < deadline and self._running:
                self._send_raw(call.peer, text)
                time.sleep(interval)
                interval = min(interval * 2, 4.0)
        threading.Thread(target=send_until_response, daemon=True).start()
        return call

    def wait_for_call(self, timeout: float = 10.0) -> PyTrunkCall:
        """The next incoming call (INVITE received); raises TimeoutError."""
        try:
            return self._incoming.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"pytrunk {self.address}: no INVITE within {timeout}s") from None

    def received(self, method: str | None = None) -> list[SipMessage]:
        """Requests received (optionally one method), in order."""
        with self._lock:
            return [m for d, m in self.messages if d == "in" and m.is_request and (method is None or m.method == method)]

    def close(self) -> None:
        self._running = False
        self._thread.join(1)
        for call in self.calls.values():
            call.rtp.close()
        self.sock.close()

    def __enter__(self) -> "PyTrunk":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
