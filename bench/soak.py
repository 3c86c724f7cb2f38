"""Soak: SIPp at a steady call rate through the B2BUA for minutes, every call recorded.

    python bench/soak.py                                   # issue 5: 50 calls/s, 10 min, 30 s hold
    python bench/soak.py --rate 5 --minutes 1 --hold 10    # a short run, about 2 minutes
    python bench/soak.py --rate 5 --minutes 2 --users 3    # the number rings a group of 3
    python bench/soak.py --rate 5 --minutes 1 --hold 10 --workers 2                      # through `b2bua cluster`
    python bench/soak.py --rate 5 --minutes 1 --hold 10 --workers 2 --kill-worker-at 30  # kill -9 worker 0 at 30 s

What runs (loopback only, every process bounded in time):

1. A temporary flows.toml: a trunk whose source is the SIPp UAC's address:port, one number
   (record = "yes") to `user:u0`, or with --users N > 1 to a ring group of u0..u(N-1), and a
   temporary recordings directory. The B2BUA (`python -m b2bua run --config ...`) is pinned
   to core 0 with taskset when there are two cores; SIPp runs on core 1.
2. SIPp registers the N users (bench/sipp/soak_register.xml: REGISTER, 401, REGISTER with
   [authentication] from an injection CSV, 200) from the port the phone-side UAS then
   listens on: the B2BUA sends INVITEs where a REGISTER came from.
3. SIPp as the phone(s) (soak_uas.xml) answers every INVITE and streams PCMU back with
   rtp_stream until the BYE; SIPp as the trunk (soak_uac.xml) calls the number at --rate
   calls/s for --minutes, streams PCMU with rtp_stream for --hold seconds, then BYE.
   rtp_stream rather than play_pcap_audio: SIPp 3.6.1 (Debian sip-tester) plays a pcap
   with one thread per call (3,000 threads at 1,500 calls each way), while rtp_stream
   shares a thread between -rtp_threadtasks calls; it sends every call's RTP from the one
   -mp socket (3.6.1's [rtpstream_audio_port] is -mp for every call) and never reads what
   comes back, which is fine here: the B2BUA latches each call's source, and what the
   phones hear is judged from the recordings. Each side sends a tone (trunk 440 Hz, phone
   1 kHz), so a silent stretch in a WAV is a gap.
4. The B2BUA's RSS (/proc/PID/status VmRSS) and CPU time are sampled every --sample
   seconds from before the first call until --after seconds after the last one.
5. After the run: SIPp's own statistics (-trace_stat) give calls attempted, succeeded and
   failed; every WAV in the recordings directory is checked with soundfile.

With --workers N, `b2bua cluster` (tests/e2e/cluster.py starts it, as the e2e tests do)
runs instead of `b2bua run`, pinned to core 0 with its edge (Kamailio) and Redis: SIPp
registers, calls and is called through the edge only; media goes straight to the workers.
RSS and CPU are the workers' (summed); the edge's CPU is printed apart. With
--kill-worker-at S, worker --kill-worker (0) is killed with SIGKILL S seconds after the
first call; the supervisor restarts it. Then the calls up on it at that moment may fail
(the trunk's BYE has nowhere to go, the phone never gets one) and nothing else may:

- the killed process's calls up at the kill are read from the cluster's log (`call=X
  event=invite ... sip-call-id=Y` lines of worker N between its start and its restart,
  without `event=ended`); SIPp's UAC writes the Call-ID of every call it aborts
  (-trace_calldebug). Every aborted Call-ID must be one of those, no call may be left
  unfinished, and the phone side may fail at most once for each of those calls;
- every other call completed and its WAV is checked exactly as below;
- each of the killed worker's WAVs was repaired by its successor at start (sidecar
  `recovered: true`, `ended` null), is readable, 8 kHz stereo, no longer than a call.

The last line printed is one JSON object: calls, failed, rss_start_mb, rss_peak_mb,
rss_after_mb, cpu_seconds, wav_ok, wavs (and a few more keys after those).

What is checked, and the bounds:

- failed calls: SIPp UAC FailedCall + calls it created that never finished, and the UAS's
  failed calls (unexpected or missing messages on the phone side).
- memory flat: rss_after <= rss_start + --rss-bound (16 MB, each worker's) + --rss-per-call (0.15 MB) x
  the peak number of concurrent calls (SIPp's CurrentCall). CPython does not give freed
  memory back: pymalloc arenas are returned only when completely empty and glibc trims the
  heap only from the top, so an idle B2BUA stays near the high-water mark of its busiest
  moment. Measured (2 cores, recording on): +11 MB after 100 concurrent calls whether they
  were 600 calls (1 min) or 1,800 (3 min), +15 MB after 150, +23 after 210, +29 after 270,
  +36 after 330: ~0.11 MB per concurrent call (legs, dialogs, transactions, relay and
  recorder state with ~1 s of audio in numpy buffers), independent of how many calls came
  and went. A leak grows with the number of calls instead, so the second number printed is
  the RSS slope (MB/min, least squares) over the second half of the plateau, when
  concurrency is flat: 0.0-0.4 MB/min when the B2BUA keeps up.
- recordings: one WAV per successful call (count == SIPp's successful calls), each 8 kHz
  stereo, each sidecar with `ended` set, each WAV as long as its sidecar's started..ended
  span (+-0.1 s: the recording covers the whole call as the B2BUA handled it, nothing cut),
  and each within [hold - 0.1 s, hold + --tolerance] (default 1.0 s). The recording runs from
  the B2BUA's answer (the phone's 200) to the trunk's BYE reaching it, while SIPp's hold runs
  from the trunk's receipt of the 200 to its sending the BYE: the WAV is longer than the hold
  by the 200's trip out of the B2BUA plus the BYE's trip in, and never shorter but for 20 ms
  of packet rounding (the 0.1 s). Those trips take tens of ms when the B2BUA keeps up (SIPp
  measures them: INVITE->200 and BYE->200 are printed); a second allows for bursts; a WAV
  longer than that means the B2BUA was seconds behind on signalling, which is a finding.
  Audio completeness (the share of 20 ms frames that are silent on either channel,
  0.5 s trimmed at each end) is printed per run; it is loss, reported, not part of wav_ok.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.cluster import ClusterProcess, cluster_section, session_cpu  # noqa: E402
from tests.e2e.pcap import SAMPLE_RATE, Tone, tone_samples, ulaw_encode  # noqa: E402

LOCAL = "127.0.0.1"
SIPP_DIR = Path(__file__).resolve().parent / "sipp"
DDI = "441632960999"
REALM = "soak"
TRUNK_HZ, PHONE_HZ = 440, 1000  # a tone on each side, so silence in a WAV is a gap
B2BUA_CORE, LOAD_CORE = 0, 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
TRACE_MSG = False  # --sipp-trace: every SIP message SIPp sends and receives, to <name>-messages.log
PIN = True  # --no-pin: the B2BUA (or cluster) and SIPp share every core


# -- small helpers -----------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def can_bind(port: int, kind: int = socket.SOCK_DGRAM) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((LOCAL, port))
            return True
        except OSError:
            return False


def free_sip_port(taken: set[int]) -> int:
    """A port free for UDP and TCP, below the RTP ranges (10000-19999)."""
    for _ in range(500):
        p = random.randint(10000, 19999)
        if p not in taken and can_bind(p) and can_bind(p, socket.SOCK_STREAM):
            taken.add(p)
            return p
    raise RuntimeError("no free SIP port in 10000-19999")


def free_sip_ports(taken: set[int], count: int) -> int:
    """The first of `count` consecutive free SIP ports (a cluster's workers), as free_sip_port."""
    for _ in range(500):
        p = random.randint(10000, 19999 - count)
        span = set(range(p, p + count))
        if not span & taken and all(can_bind(q) and can_bind(q, socket.SOCK_STREAM) for q in span):
            taken.update(span)
            return p
    raise RuntimeError(f"no {count} consecutive free SIP ports in 10000-19999")


def free_media_port(taken: set[int]) -> int:
    """An even port p with p and p+2 free (SIPp binds its -mp audio and p+2 video sockets),
    in 33000-60998 so it is clear of the B2BUA's RTP range."""
    for _ in range(500):
        p = random.randint(33000 // 2, 60996 // 2) * 2
        if not taken & {p, p + 2} and can_bind(p) and can_bind(p + 2):
            taken.update((p, p + 2))
            return p
    raise RuntimeError("no free media port for SIPp")


def rss_mb(pid: int) -> float:
    """Resident set size now (VmRSS), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu(pid: int) -> float:
    """CPU seconds of a process and its threads; 0 once it is gone (read before reaping)."""
    try:
        return cpu_seconds(pid)
    except (OSError, IndexError, ValueError):
        return 0.0


def core_busy(core: int) -> float:
    """Seconds core `core` spent not idle since boot (/proc/stat: user..steal minus idle, iowait)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:9]]
            return (sum(v) - v[3] - v[4]) / CLK_TCK
    return 0.0


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def sip_ping(port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOCAL, 0))
        s.settimeout(timeout)
        lport = s.getsockname()[1]
        msg = (f"OPTIONS sip:{LOCAL}:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {LOCAL}:{lport};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport\r\n"
               f"From: <sip:soak@{LOCAL}:{lport}>;tag=1\r\nTo: <sip:{LOCAL}:{port}>\r\n"
               f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        try:
            s.sendto(msg.encode(), (LOCAL, port))
            s.recvfrom(65535)
            return True
        except OSError:
            return False


def pinned(argv: list[str], core: int) -> list[str]:
    """`taskset -c CORE argv` when there is a second core to keep the load off the B2BUA's
    (and --no-pin was not given)."""
    if PIN and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core), *argv]
    return argv


class Proc:
    """A child in its own session, output to a file; stopped by signal, then SIGKILL, by pid."""

    live: list["Proc"] = []

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict | None = None):
        self.name = name
        self.argv = argv
        self.out_path = workdir / f"{name}.out"
        self._out = self.out_path.open("wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
                                  cwd=workdir, env=env, start_new_session=True)
        Proc.live.append(self)

    @property
    def pid(self) -> int:
        return self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.p.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.p.send_signal(sig)
            if self.wait(grace) is None:
                with contextlib.suppress(ProcessLookupError):
                    self.p.kill()
                self.wait(5)
        self._out.close()
        if self in Proc.live:
            Proc.live.remove(self)
        return self.p.returncode

    def tail(self, n: int = 2000) -> str:
        try:
            return self.out_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    @classmethod
    def kill_all(cls) -> None:
        for proc in list(cls.live):
            proc.stop(signal.SIGKILL, grace=0)


class Deadline(Exception):
    """The run's time bound passed."""


# -- inputs ------------------------------------------------------------------------------

def flows_toml(a: argparse.Namespace, ports: dict, rtp: tuple[int, int], recordings: Path) -> str:
    users = [f"u{i}" for i in range(a.users)]
    to = "user:u0" if a.users == 1 else "ring_group:soak"
    text = f'''# bench/soak.py: generated
[server]
listen = "{LOCAL}:{ports['sip']}"
media_ip = "{LOCAL}"
rtp_ports = "{rtp[0]}-{rtp[1]}"
recordings_dir = "{recordings}"
realm = "{REALM}"

[organisation]
name = "Soak"
call_recording = true

[security]
max_auth_failures = 1000000

[[trunks]]
name = "sipp"
sources = ["{LOCAL}:{ports['trunk']}"]
uri = "sip:{LOCAL}:{ports['trunk']}"

[[numbers]]
ddi = "{DDI}"
record = "yes"
to = "{to}"
'''
    if a.users > 1:
        text += f'''
[[ring_groups]]
name = "soak"
members = {json.dumps(users)}
ring_timeout = 30
'''
    for i, user in enumerate(users):
        text += f'''
[[users]]
name = "{user}"
extension = "{300 + i}"
password = "pw-{user}"
'''
    return text


def render(scenario: str, workdir: Path, **params) -> Path:
    text = (SIPP_DIR / scenario).read_text()
    for k, v in params.items():
        text = text.replace(f"@@{k}@@", str(v))
    left = re.findall(r"@@(\w+)@@", text)
    if left:
        raise ValueError(f"{scenario}: no value for {left}")
    out = workdir / scenario
    out.write_text(text)
    return out


def write_audio(path: Path, hz: float) -> Path:
    """One second of a PCMU tone, raw (rtp_stream skips nothing and loops it): a whole number
    of cycles, so the loop is seamless."""
    path.write_bytes(ulaw_encode(tone_samples([Tone(hz, 1.0)])))
    return path


def sipp_argv(remote: str | None, scenario: Path, port: int, workdir: Path, name: str, extra: list[str]) -> list[str]:
    argv = [shutil.which("sipp") or "sipp"]
    if remote:
        argv.append(remote)
    argv += ["-sf", str(scenario), "-i", LOCAL, "-p", str(port), "-t", "u1", "-nostdin",
             "-cp", str(free_control_port()),
             "-trace_err", "-error_file", str(workdir / f"{name}-errors.log"),
             "-trace_stat", "-stf", str(workdir / f"{name}-stat.csv"), "-fd", "5",
             "-trace_screen", "-screen_file", str(workdir / f"{name}-screen.log"),
             *(["-trace_msg", "-message_file", str(workdir / f"{name}-messages.log")] if TRACE_MSG else []),
             *extra]
    return argv


def free_control_port() -> int:
    for _ in range(200):
        p = random.randint(10000, 19999)
        if can_bind(p):
            return p
    return 0


def read_stat_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a SIPp -trace_stat CSV (';'-separated, header first), one per -fd period."""
    try:
        rows = [r for r in csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";") if r]
    except OSError:
        return []
    return [dict(zip(rows[0], r)) for r in rows[1:]]


def read_stat(path: Path) -> dict[str, str]:
    """The last row of a SIPp -trace_stat CSV: the totals at exit."""
    rows = read_stat_rows(path)
    return rows[-1] if rows else {}


def stat_ms(stat: dict[str, str], key: str) -> float | None:
    """A SIPp response time ("HH:MM:SS:micro") in ms."""
    m = re.fullmatch(r"(\d+):(\d+):(\d+):(\d+)", stat.get(key, "").strip())
    if not m:
        return None
    h, mi, s, us = map(int, m.groups())
    return round((h * 3600 + mi * 60 + s) * 1000 + us / 1000, 1)


def slowest_ms(stat: dict[str, str], rtd: str) -> float:
    """Upper bound of the slowest non-empty ResponseTimeRepartition bucket of `rtd`, ms
    (the open-ended last bucket counts as 32 s, SIP's 64 x T1 give-up time)."""
    bound = 0.0
    for key, value in stat.items():
        m = re.fullmatch(rf"ResponseTimeRepartition{rtd}_(<|>=)(\d+)", key)
        if m and stat_int(stat, key) > 0:
            bound = max(bound, float(m.group(2)) if m.group(1) == "<" else 32000.0)
    return bound


def failure_kinds(stat: dict[str, str]) -> dict[str, int]:
    """SIPp's cumulative failure counters that are not zero, e.g. {"MaxUDPRetrans": 12}."""
    kinds = {}
    for key in stat:
        m = re.fullmatch(r"Failed(\w+)\(C\)", key)
        if m and m.group(1) != "Call" and stat_int(stat, key):
            kinds[m.group(1)] = stat_int(stat, key)
    return kinds


def stat_int(stat: dict[str, str], key: str) -> int:
    try:
        return int(stat.get(key, "0") or 0)
    except ValueError:
        return 0


# -- the sampler -------------------------------------------------------------------------

class Sampler(threading.Thread):
    """RSS and CPU of the B2BUA's process(es) every `interval` seconds: [(t, rss_mb, cpu_s, fds)].

    `pids()` names the processes now (one for `b2bua run`; a cluster's workers, whose pids
    change when one is restarted): RSS and descriptors are summed over the live ones, CPU
    over every process ever seen (a dead worker's last reading stays in the total).
    With `cap_mb`, SIGKILLs a pid (our own child) the moment its RSS passes the cap: an
    overloaded B2BUA must not take a shared machine's memory with it."""

    def __init__(self, pids, interval: float, cap_mb: float = 0.0):
        super().__init__(daemon=True)
        self.pids, self.interval, self.cap_mb = pids, interval, cap_mb
        self.capped: float | None = None
        self.samples: list[tuple[float, float, float, int]] = []
        self.cpu_by_pid: dict[int, float] = {}
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def cpu(self) -> float:
        """CPU seconds of every process so far (reads the live ones now)."""
        for pid in self.pids():
            with contextlib.suppress(OSError, IndexError, ValueError):
                self.cpu_by_pid[pid] = cpu_seconds(pid)
        return sum(self.cpu_by_pid.values())

    def hwm(self) -> float:
        return sum(hwm_mb(pid) for pid in self.pids() if Path(f"/proc/{pid}").exists())

    def sample(self) -> tuple[float, float, float, int] | None:
        rss = fds = 0.0
        seen = 0
        for pid in self.pids():
            try:
                one = rss_mb(pid)
                self.cpu_by_pid[pid] = cpu_seconds(pid)
                fds += open_fds(pid)
            except (OSError, IndexError, ValueError):
                continue
            seen += 1
            rss += one
            if self.cap_mb and one > self.cap_mb and self.capped is None:
                self.capped = one
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if not seen:
            return None
        s = (time.monotonic() - self.t0, rss, sum(self.cpu_by_pid.values()), int(fds))
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


# -- the B2BUA under load: one process, or a cluster --------------------------------------

class OneProcess:
    """`b2bua run`, pinned to the B2BUA's core."""

    def __init__(self, a: argparse.Namespace, config: Path, workdir: Path, sip_port: int, remaining):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = Proc("b2bua", pinned([a.python, "-m", "b2bua", "run", "--config", str(config)], B2BUA_CORE),
                         workdir, env)
        self.log_path = self.proc.out_path
        t_start = time.monotonic()
        while not sip_ping(sip_port):
            if not self.proc.alive():
                raise RuntimeError(f"the B2BUA exited at start:\n{self.proc.tail()}")
            if time.monotonic() - t_start > 30:
                raise RuntimeError(f"the B2BUA did not answer OPTIONS within 30 s:\n{self.proc.tail()}")
            time.sleep(min(0.2, remaining()))

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def alive(self) -> bool:
        return self.proc.alive()

    @property
    def returncode(self) -> int | None:
        return self.proc.p.returncode

    def tail(self) -> str:
        return self.proc.tail()

    def stop(self, grace: float) -> int | None:
        return self.proc.stop(signal.SIGTERM, grace=grace)


class Cluster:
    """`b2bua cluster` (tests/e2e/cluster.py starts and stops it), pinned to the B2BUA's
    core: the edge at the soak's SIP port, `--workers` workers behind it. Its pids are the
    workers' (the edge's CPU is measured apart); the log is read as it grows."""

    def __init__(self, a: argparse.Namespace, config_text: str, workdir: Path, sip_port: int):
        self.process = ClusterProcess(config_text, workdir, argv_prefix=pinned([], B2BUA_CORE), name="b2bua",
                                      sip_trace=False, python=a.python)
        self.log_path = workdir / "b2bua.log"
        self.process.start(f"{LOCAL}:{sip_port}", a.workers, timeout=60, settle=2.5)
        self.workers: dict[int, int] = {}
        self._read = 0
        self._lock = threading.Lock()
        self.edge_pid = self.process.edge_pid()
        Proc.live.append(self)  # type: ignore[arg-type]  stopped with the rest on any exit

    def pids(self) -> list[int]:
        with self._lock:
            with contextlib.suppress(OSError):
                with self.log_path.open("rb") as f:
                    f.seek(self._read)
                    chunk = f.read()
                end = chunk.rfind(b"\n") + 1
                self._read += end
                for i, pid in re.findall(rb"worker=(\d+) pid=(\d+) port=\d+ event=started", chunk[:end]):
                    self.workers[int(i)] = int(pid)
            return list(self.workers.values())

    def alive(self) -> bool:
        return self.process.alive()

    @property
    def returncode(self) -> int | None:
        return self.process._proc.proc.returncode if self.process._proc else None

    def tail(self) -> str:
        return self.process.logs()[-2000:]

    def kill9(self, index: int) -> int:
        return self.process.kill9_worker(index)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 20.0) -> int | None:
        """SIGTERM (the workers end their calls and finalise their recordings, then the edge
        and Redis stop), SIGKILL past the grace; `sig` is ignored: a cluster is always drained."""
        if self in Proc.live:
            Proc.live.remove(self)  # type: ignore[arg-type]
        return self.process.stop(max(grace, 10.0))


# -- recordings --------------------------------------------------------------------------

def check_recordings(directory: Path, expected: int, hold: float, tolerance: float, audio: bool,
                     deadline: float, exclude: set[str] = frozenset()) -> dict:
    """Every WAV: format, sidecar `ended`, length == the sidecar's started..ended span (the
    recording covers the whole call as the B2BUA saw it), length in [hold - 0.1, hold +
    tolerance]; with `audio`, the share of silent 20 ms frames (a tone is sent both ways).
    WAVs named in `exclude` (a killed worker's calls: check_recovered) are left out."""
    import numpy as np
    import soundfile as sf

    wavs = sorted(w for w in directory.rglob("*.wav") if w.stem not in exclude)
    lengths: list[float] = []
    problems: dict[str, list[str]] = {}
    gaps: list[float] = []  # per WAV: share of 20 ms frames silent on either channel
    lo, hi = hold - 0.1, hold + tolerance

    def problem(kind: str, detail: str) -> None:
        problems.setdefault(kind, []).append(detail)

    for i, wav in enumerate(wavs):
        if time.monotonic() > deadline:
            problem("not checked (time bound)", f"{len(wavs) - i} WAVs")
            break
        try:
            info = sf.info(str(wav))
        except Exception as exc:  # noqa: BLE001 - an unreadable WAV is a finding, not a crash
            problem("unreadable", f"{wav.name}: {exc}")
            continue
        length = info.frames / info.samplerate if info.samplerate else 0.0
        lengths.append(length)
        if info.samplerate != SAMPLE_RATE or info.channels != 2:
            problem("format", f"{wav.name}: {info.samplerate} Hz x {info.channels}")
        if length < lo:
            problem("shorter than the hold", f"{wav.name}: {length:.3f} s")
        elif length > hi:
            problem(f"longer than hold + {tolerance:g} s", f"{wav.name}: {length:.3f} s")
        try:
            side = json.loads(wav.with_suffix(".json").read_text())
        except (OSError, ValueError) as exc:
            problem("sidecar unreadable", f"{wav.name}: {exc}")
            side = {}
        if side and not side.get("ended"):
            problem("sidecar without `ended`", wav.name)
        elif side:
            try:
                span = (iso(side["ended"]) - iso(side["started"])).total_seconds()
                if abs(length - span) > 0.1:
                    problem("WAV shorter/longer than its call", f"{wav.name}: {length:.3f} s for {span:.3f} s")
            except (KeyError, ValueError) as exc:
                problem("sidecar times", f"{wav.name}: {exc}")
        if audio:
            x, _ = sf.read(str(wav), dtype="int16", always_2d=True)
            trim = SAMPLE_RATE // 2
            x = x[trim:len(x) - trim]
            n = len(x) // 160
            if n:
                peak = np.abs(x[: n * 160].reshape(n, 160, 2).astype(np.int32)).max(axis=1)
                gaps.append(float((peak < 64).any(axis=1).mean()))
    if len(wavs) != expected:
        problem("count", f"{len(wavs)} WAVs for {expected} successful calls")
    return {
        "wavs": len(wavs),
        "wav_ok": not problems,
        "problems": {k: {"count": len(v), "e.g.": v[:3]} for k, v in problems.items()},
        "length_min": round(min(lengths), 3) if lengths else None,
        "length_mean": round(statistics.fmean(lengths), 3) if lengths else None,
        "length_max": round(max(lengths), 3) if lengths else None,
        "audio_gap_mean": round(statistics.fmean(gaps), 5) if gaps else None,
        "audio_gap_max": round(max(gaps), 5) if gaps else None,
        "audio_complete": sum(1 for g in gaps if g == 0.0) if gaps else None,
    }


def iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- a cluster's calls, by worker process ------------------------------------------------

def calls_by_process(log_text: str) -> dict[int, dict]:
    """Each worker process's calls, from `b2bua cluster`'s log: {pid: {"index", "calls":
    {call id: trunk Call-ID}, "answered": {call id}, "ended": {call id}}}.

    Workers share the supervisor's stderr and every worker line says `worker=N`; a line of
    worker N belongs to the process of N's latest `worker=N pid=P ... event=started` line
    before it (a killed process writes nothing after the supervisor sees it exit, and its
    replacement nothing before the supervisor starts it)."""
    owner: dict[int, int] = {}
    procs: dict[int, dict] = {}
    started = re.compile(r"b2bua\.cluster: worker=(\d+) pid=(\d+) port=\d+ event=started")
    event = re.compile(r" worker=(\d+) [\w.]+: call=(\S+) event=(invite|answered|ended)\b(.*)")
    for line in log_text.splitlines():
        m = started.search(line)
        if m:
            index, pid = int(m.group(1)), int(m.group(2))
            owner[index] = pid
            procs[pid] = {"index": index, "calls": {}, "answered": set(), "ended": set()}
            continue
        m = event.search(line)
        if not m or int(m.group(1)) not in owner:
            continue
        proc = procs[owner[int(m.group(1))]]
        call, kind = m.group(2), m.group(3)
        if kind == "invite":
            sip = re.search(r"sip-call-id=(\S+)", m.group(4))
            proc["calls"][call] = sip.group(1).strip('"') if sip else ""
        else:
            proc[kind].add(call)
    return procs


def failed_call_ids(calldebug: Path) -> list[str]:
    """The Call-IDs of the calls SIPp aborted (-trace_calldebug writes one block per call)."""
    try:
        text = calldebug.read_text(errors="replace")
    except OSError:
        return []
    return list(dict.fromkeys(re.findall(r"^Call debugging information for call (\S+?):?$", text, re.M)))


def check_recovered(directory: Path, call_ids: set[str], longest: float) -> dict:
    """The killed worker's recordings: each repaired at its successor's start (sidecar
    `recovered`, `ended` null) and playable (soundfile reads it, 8 kHz stereo, no longer
    than `longest`: the time from the first call to the kill, + tolerance)."""
    import soundfile as sf

    wavs = [w for w in directory.rglob("*.wav") if w.stem in call_ids]
    problems: dict[str, list[str]] = {}
    lengths: list[float] = []
    for wav in wavs:
        try:
            side = json.loads(wav.with_suffix(".json").read_text())
            info = sf.info(str(wav))
        except Exception as exc:  # noqa: BLE001 - a finding
            problems.setdefault("unreadable", []).append(f"{wav.name}: {exc}")
            continue
        length = info.frames / info.samplerate if info.samplerate else 0.0
        lengths.append(length)
        if not side.get("recovered") or side.get("ended") is not None:
            problems.setdefault("not repaired", []).append(
                f"{wav.name}: recovered={side.get('recovered')} ended={side.get('ended')}")
        if info.samplerate != SAMPLE_RATE or info.channels != 2 or length > longest:
            problems.setdefault("format or length", []).append(f"{wav.name}: {info.samplerate} Hz x {info.channels}, {length:.2f} s")
    return {
        "wavs": len(wavs), "ok": not problems,
        "problems": {k: {"count": len(v), "e.g.": v[:3]} for k, v in problems.items()},
        "length_min": round(min(lengths), 2) if lengths else None,
        "length_max": round(max(lengths), 2) if lengths else None,
    }


def kill_verdict(kill: dict, log_text: str, calldebug: Path, uac: dict, uas_failed: int) -> dict:
    """Only the killed worker's calls failed, nothing else.

    The killed process's calls still up at the kill (logged `invite`, never `ended`) may
    fail; every call SIPp counts as failed must be one of them (by its Call-ID), none may
    be left unfinished, and the phone side may fail at most once for each of them."""
    procs = calls_by_process(log_text)
    mine = procs.get(kill["pid"], {"calls": {}, "answered": set(), "ended": set()})
    up = {call: sip for call, sip in mine["calls"].items() if call not in mine["ended"]}
    elsewhere = {sip for pid, p in procs.items() if pid != kill["pid"] for sip in p["calls"].values()}
    up_sip = set(up.values())
    failed_ids = failed_call_ids(calldebug)
    strangers = [c for c in failed_ids if c not in up_sip]
    identified = len(failed_ids) == uac["failed"]
    return {
        "killed_worker": kill["index"], "killed_pid": kill["pid"], "killed_at_s": kill["at_s"],
        "killed_calls_total": len(mine["calls"]),
        "killed_calls_up": len(up),
        "killed_calls_up_answered": len(set(up) & mine["answered"]),
        # set up on the killed process but answered by another after the edge's failover
        "killed_calls_failed_over": len(up_sip & elsewhere),
        "failed_ids": len(failed_ids),
        "failed_not_on_killed_worker": len(strangers), "e.g.": strangers[:5],
        "only_killed_worker_failed": identified and not strangers and uac["unfinished"] == 0 and uas_failed <= len(up),
        "other_calls_completed": uac["created"] - uac["ok"] - len(failed_ids) == 0 and not strangers,
        "up_call_ids": sorted(up),
        "workers_started": len(procs),
    }


# -- the run -----------------------------------------------------------------------------

def run(a: argparse.Namespace, workdir: Path, deadline: float) -> dict:
    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Deadline()
        return left

    total_calls = max(1, round(a.rate * a.minutes * 60))
    concurrency = math.ceil(a.rate * (a.hold + 2)) + 50
    max_calls = 2 * concurrency  # SIPp -l: room for calls that pile up while the B2BUA is slow
    taken: set[int] = set()
    ports = {"sip": free_sip_port(taken), "trunk": free_sip_port(taken), "phone": free_sip_port(taken)}
    # Media: the B2BUA takes 4 ports a call (RTP+RTCP facing each side) from its range and
    # skips ports another process holds; SIPp 3.6.1's rtp_stream sends every call from its
    # one -mp socket, above the B2BUA's range. A cluster's workers split the range evenly.
    rtp_low = 20000
    rtp_high = min(32767, rtp_low + max(1, a.workers) * (4 * max_calls + 400))
    uac_media, uas_media = free_media_port(taken), free_media_port(taken)
    recordings = workdir / "recordings"
    config = workdir / "flows.toml"
    config_text = flows_toml(a, ports, (rtp_low, rtp_high), recordings)
    if a.workers:
        ports["workers"] = free_sip_ports(taken, a.workers)
        ports["redis"] = free_sip_port(taken)
        config_text += "\n" + cluster_section(a.workers, ports["workers"], ports["redis"])
    trunk_audio = write_audio(workdir / "trunk.ulaw", TRUNK_HZ)
    phone_audio = write_audio(workdir / "phone.ulaw", PHONE_HZ)
    (workdir / "users.csv").write_text("SEQUENTIAL\n" + "".join(
        f"u{i};[authentication username=u{i} password=pw-u{i}]\n" for i in range(a.users)))
    log(f"workdir {workdir}; SIP {'edge' if a.workers else 'b2bua'}={ports['sip']} trunk={ports['trunk']} "
        f"phone={ports['phone']}; b2bua rtp {rtp_low}-{rtp_high}; {total_calls} calls at {a.rate}/s, hold {a.hold}s, "
        f"~{int(a.rate * a.hold)} concurrent" + (f"; {a.workers} workers from port {ports['workers']}" if a.workers else ""))

    if a.workers:
        b2bua: OneProcess | Cluster = Cluster(a, config_text, workdir, ports["sip"])
    else:
        config.write_text(config_text)
        b2bua = OneProcess(a, config, workdir, ports["sip"], remaining)
    remote = f"{LOCAL}:{ports['sip']}"

    # 1. register the phone(s), from the port the UAS listens on next
    reg_sf = render("soak_register.xml", workdir)
    reg = Proc("sipp-register", pinned(sipp_argv(remote, reg_sf, ports["phone"], workdir, "register", [
        "-inf", str(workdir / "users.csv"), "-m", str(a.users), "-r", "50", "-timeout", "30s", "-timeout_error",
        "-recv_timeout", "5000"]), LOAD_CORE), workdir)
    rc = reg.wait(min(40, remaining()))
    reg.stop()
    reg_stat = read_stat(workdir / "register-stat.csv")
    registered = stat_int(reg_stat, "SuccessfulCall(C)")
    if rc != 0 or registered != a.users:
        errors = workdir / "register-errors.log"
        raise RuntimeError(f"registration: sipp exited {rc}, {registered}/{a.users} registered\n{reg.tail()}\n"
                           + (errors.read_text(errors="replace")[-2000:] if errors.exists() else ""))
    log(f"registered {registered} user(s) with digest auth")

    # 2. the phone side
    load_s = a.minutes * 60
    sipp_timeout = int(load_s + a.hold + a.drain + 60)
    uas_sf = render("soak_uas.xml", workdir, audio=phone_audio)
    uas = Proc("sipp-uas", pinned(sipp_argv(None, uas_sf, ports["phone"], workdir, "uas", [
        "-mi", LOCAL, "-mp", str(uas_media), "-rtp_threadtasks", str(a.rtp_threadtasks),
        "-recv_timeout", str(int((a.hold + 30) * 1000)),
        "-timeout", f"{sipp_timeout}s"]), LOAD_CORE), workdir)
    t_bind = time.monotonic()
    while can_bind(ports["phone"]):
        if not uas.alive() or time.monotonic() - t_bind > 10:
            raise RuntimeError(f"the SIPp UAS did not start:\n{uas.tail()}")
        time.sleep(0.1)

    # 3. baseline, then the trunk's calls
    sampler = Sampler(b2bua.pids, a.sample, a.rss_cap)
    time.sleep(1.0)
    base = [sampler.sample() for _ in range(3) if not time.sleep(0.5)]
    rss_start = statistics.median(s[1] for s in base if s)
    cpu_start = sampler.cpu()
    edge_cpu_start = session_cpu(b2bua.edge_pid) if isinstance(b2bua, Cluster) else 0.0
    sampler.start()
    uac_sf = render("soak_uac.xml", workdir, audio=trunk_audio, hold_ms=int(a.hold * 1000))
    t_load = time.monotonic()
    uac = Proc("sipp-uac", pinned(sipp_argv(remote, uac_sf, ports["trunk"], workdir, "uac", [
        "-s", DDI, "-mi", LOCAL, "-mp", str(uac_media), "-rtp_threadtasks", str(a.rtp_threadtasks),
        "-r", str(a.rate), "-m", str(total_calls), "-l", str(max_calls), "-recv_timeout", "30000",
        "-timeout", f"{sipp_timeout}s", "-timeout_error",
        # the Call-IDs of failed calls, to tell whose they were (a killed worker's or not)
        *(["-trace_calldebug", "-calldebug_file", str(workdir / "uac-calldebug.log")] if a.workers else [])]),
        LOAD_CORE), workdir)
    core0_start = core_busy(B2BUA_CORE)
    log(f"load started: sipp uac pid {uac.pid}, uas pid {uas.pid}, b2bua pid(s) {b2bua.pids()}, rss {rss_start:.1f} MB")
    last_report = 0.0
    stopped = ""
    kill: dict = {}
    while uac.alive():
        pending = a.kill_worker_at is not None and not kill
        uac.wait(min(0.2 if pending else 2.0, remaining()))
        now = time.monotonic()
        if pending and now - t_load >= a.kill_worker_at and isinstance(b2bua, Cluster):
            kill = {"index": a.kill_worker, "pid": b2bua.kill9(a.kill_worker), "at_s": round(now - t_load, 1)}
            log(f"kill -9 worker {kill['index']} (pid {kill['pid']}) at t={kill['at_s']}s")
        if now - last_report >= a.report and sampler.samples:
            last_report = now
            st = read_stat(workdir / "uac-stat.csv")
            t, rss, cpu, fds = sampler.samples[-1]
            log(f"t={now - t_load:5.0f}s calls created={stat_int(st, 'TotalCallCreated')} "
                f"current={stat_int(st, 'CurrentCall')} ok={stat_int(st, 'SuccessfulCall(C)')} "
                f"failed={stat_int(st, 'FailedCall(C)')} b2bua rss={rss:.1f} MB cpu={cpu - cpu_start:.0f}s fds={fds}")
        if not b2bua.alive():
            stopped = f"the B2BUA was killed at {sampler.capped:.0f} MB RSS (--rss-cap)" if sampler.capped \
                else f"the B2BUA exited ({b2bua.returncode}) during the run"
            log(stopped)
            break
        free_gb = shutil.disk_usage(workdir).free / 2**30
        if free_gb < a.min_free_gb:
            stopped = f"stopped the load: {free_gb:.1f} GB free on the recordings' disk (--min-free-gb)"
            log(stopped)
            break
    sipp_cpu = proc_cpu(uac.pid) + proc_cpu(uas.pid)
    core0_busy = core_busy(B2BUA_CORE) - core0_start
    b2bua_load_cpu = sampler.cpu() - cpu_start
    # what else ran on the B2BUA's core while it was pinned there (others' benchmarks, SIPp
    # if there is one core): time the B2BUA could not have had.
    other_core0 = round(100 * max(0.0, core0_busy - b2bua_load_cpu) / max(1e-9, time.monotonic() - t_load), 1)
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    uac_rc = uac.stop(signal.SIGUSR1, grace=5)
    t_end = time.monotonic()
    uas_cpu_at_end = proc_cpu(uas.pid)
    log(f"load ended after {t_end - t_load:.0f}s (sipp uac exit {uac_rc}); sampling {a.after:.0f}s more")
    # 4. after the run: the phone side's last BYEs, then idle
    while time.monotonic() < t_end + a.after and b2bua.alive():
        time.sleep(min(1.0, remaining()))
    sampler.stop()
    after = [s for s in (sampler.sample() for _ in range(3) if not time.sleep(0.5)) if s]
    alive = b2bua.alive()
    rss_after = statistics.median(s[1] for s in after) if after and alive else None
    last = sampler.samples[-1] if sampler.samples else None
    cpu_total = (sampler.cpu() if alive else (last[2] if last else cpu_start)) - cpu_start
    rss_peak = max([s[1] for s in sampler.samples] + [rss_start])
    vm_hwm = sampler.hwm() if alive else None
    edge_cpu = session_cpu(b2bua.edge_pid) - edge_cpu_start if isinstance(b2bua, Cluster) and alive else None
    sipp_cpu += proc_cpu(uas.pid) - uas_cpu_at_end
    uas.stop(signal.SIGUSR1, grace=5)
    b2bua_rc = b2bua.stop(grace=20)

    # 5. figures
    uac_stat, uas_stat = read_stat(workdir / "uac-stat.csv"), read_stat(workdir / "uas-stat.csv")
    created = stat_int(uac_stat, "TotalCallCreated")
    ok = stat_int(uac_stat, "SuccessfulCall(C)")
    failed = stat_int(uac_stat, "FailedCall(C)")
    unfinished = max(0, created - ok - failed)
    uas_failed = stat_int(uas_stat, "FailedCall(C)")
    with (workdir / "rss.csv").open("w") as f:
        f.write("t_since_load_s,rss_mb,cpu_s,fds\n")
        for t, r, c, n in sampler.samples:
            f.write(f"{t - (t_load - sampler.t0):.1f},{r:.1f},{c - cpu_start:.2f},{n}\n")
    peak_calls = max([stat_int(r, "CurrentCall") for r in read_stat_rows(workdir / "uac-stat.csv")] + [0])
    rss_bound = a.rss_bound * max(1, a.workers) + a.rss_per_call * peak_calls  # --rss-bound is each process's
    slope = steady_slope(sampler.samples, t_load - sampler.t0, t_end - sampler.t0, a.hold)
    cpu_steady = steady_cpu(sampler.samples, t_load - sampler.t0, a.hold, load_s)
    log_text = b2bua.log_path.read_text(errors="replace")
    b2b = {
        "answered": len(re.findall(r"event=answered ", log_text)),
        "ended": len(re.findall(r"event=ended ", log_text)),
        "errors": len(re.findall(r" (ERROR|CRITICAL) ", log_text)),
        "media_failed": len(re.findall(r"event=media-failed", log_text)),
        "os_limit_warnings": list(dict.fromkeys(re.findall(r"startup os-limit: (.*)", log_text))),
    }
    causes: dict[str, int] = {}
    for cause in re.findall(r"event=ended cause=(\S+)", log_text):
        causes[cause] = causes.get(cause, 0) + 1
    log(f"b2bua log: {b2b['answered']} answered, {b2b['ended']} ended {causes}, {b2b['errors']} errors; exit {b2bua_rc}")
    for w in b2b["os_limit_warnings"]:
        log(f"b2bua warned: {w}")
    tolerance = a.tolerance
    killed: dict = {}
    recovered: dict = {}
    if kill:
        killed = kill_verdict(kill, log_text, workdir / "uac-calldebug.log",
                              {"created": created, "ok": ok, "failed": failed, "unfinished": unfinished}, uas_failed)
        recovered = check_recovered(recordings, set(killed["up_call_ids"]), kill["at_s"] + tolerance)
        log(f"killed worker {kill['index']} (pid {kill['pid']}) at t={kill['at_s']}s: {killed['killed_calls_up']} of its "
            f"{killed['killed_calls_total']} calls were up ({killed['killed_calls_up_answered']} answered, "
            f"{killed['killed_calls_failed_over']} failed over); SIPp failed {failed} (+{unfinished} unfinished), "
            f"{killed['failed_ids']} identified, {killed['failed_not_on_killed_worker']} not the killed worker's; "
            f"{recovered['wavs']} of its WAVs, repaired: {recovered['ok']}")
    log(f"checking WAVs: length in [{a.hold - 0.1:.2f}, {a.hold + tolerance:.2f}] s and equal to their call's span"
        + (" (but the killed worker's)" if kill else ""))
    rec = check_recordings(recordings, ok, a.hold, tolerance, a.audio_check,
                           deadline=deadline - 5, exclude=set(killed.get("up_call_ids", ())))
    killed.pop("up_call_ids", None)
    return {
        "calls": created,
        "failed": failed + unfinished + uas_failed,
        "rss_start_mb": round(rss_start, 1),
        "rss_peak_mb": round(rss_peak, 1),
        "rss_after_mb": round(rss_after, 1) if rss_after is not None else None,
        "cpu_seconds": round(cpu_total, 1),
        "wav_ok": rec["wav_ok"],
        "wavs": rec["wavs"],
        # the rest: detail
        "succeeded": ok,
        "uac_failed": failed,
        "uac_unfinished": unfinished,
        "uas_failed": uas_failed,
        "rss_flat": rss_after is not None and rss_after <= rss_start + rss_bound,
        "rss_bound_mb": round(rss_bound, 1),
        "peak_concurrent_calls": peak_calls,
        "rss_slope_mb_per_min": slope,
        "vm_hwm_mb": round(vm_hwm, 1) if vm_hwm is not None else None,
        "stopped": stopped or None,
        "cpu_percent": round(100 * cpu_total / max(1e-9, t_end - t_load), 1),
        "cpu_percent_steady": cpu_steady,
        "load_seconds": round(t_end - t_load, 1),
        "setup_ms_mean": stat_ms(uac_stat, "ResponseTimesetup(C)"),
        "setup_ms_stdev": stat_ms(uac_stat, "ResponseTimesetupStDev(C)"),
        "bye_ms_mean": stat_ms(uac_stat, "ResponseTimebye(C)"),
        "uac_failure_kinds": failure_kinds(uac_stat),
        "uas_failure_kinds": failure_kinds(uas_stat),
        "retransmissions": stat_int(uac_stat, "Retransmissions(C)") + stat_int(uas_stat, "Retransmissions(C)"),
        "sipp_watchdog": stat_int(uac_stat, "WatchdogMajor(C)") + stat_int(uas_stat, "WatchdogMajor(C)"),
        "sipp_cpu_seconds": round(sipp_cpu, 1),
        "wav_tolerance_s": round(tolerance, 2),
        "setup_ms_slowest_bucket": slowest_ms(uac_stat, "setup"),
        "bye_ms_slowest_bucket": slowest_ms(uac_stat, "bye"),
        "core0_other_percent": other_core0,
        "loadavg": loadavg,
        "length_min": rec["length_min"], "length_mean": rec["length_mean"], "length_max": rec["length_max"],
        "audio_gap_mean": rec["audio_gap_mean"], "audio_gap_max": rec["audio_gap_max"],
        "audio_complete": rec["audio_complete"],
        "wav_problems": rec["problems"],
        "b2bua_alive_at_end": alive, "b2bua_exit": b2bua_rc,
        "b2bua_end_causes": causes, "b2bua_errors": b2b["errors"],
        "rate": a.rate, "minutes": a.minutes, "hold": a.hold, "users": a.users,
        "pinned": a.pin, "workers": a.workers, "edge_cpu_seconds": round(edge_cpu, 1) if edge_cpu is not None else None,
        "edge_cpu_ms_per_call": round(1000 * edge_cpu / max(created, 1), 2) if edge_cpu is not None else None,
        "kill": killed or None, "recovered": recovered or None,
    }


def steady_slope(samples: list, t_load: float, t_end: float, hold: float) -> float | None:
    """RSS growth, MB/min, by least squares over the second half of the load's steady state
    (after the first `hold` seconds, when concurrency has reached rate x hold)."""
    start = t_load + hold + (t_end - t_load - hold) / 2
    pts = [(t, r) for t, r, *_ in samples if start <= t <= t_end]
    if len(pts) < 4:
        return None
    mt = statistics.fmean(t for t, _ in pts)
    mr = statistics.fmean(r for _, r in pts)
    den = sum((t - mt) ** 2 for t, _ in pts)
    return round(60 * sum((t - mt) * (r - mr) for t, r in pts) / den, 2) if den else None


def steady_cpu(samples: list, t_load: float, hold: float, load_s: float) -> float | None:
    """The B2BUA's CPU use, %, while concurrency is at its plateau: from `hold` seconds after
    the first call until the last call is placed."""
    pts = [(t, c) for t, _, c, _ in samples if t_load + hold + 2 <= t <= t_load + load_s]
    if len(pts) < 2 or pts[-1][0] - pts[0][0] < 4:
        return None
    return round(100 * (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=50, help="calls per second (default 50)")
    ap.add_argument("--minutes", type=float, default=10, help="how long calls are placed (default 10)")
    ap.add_argument("--hold", type=float, default=30, help="seconds of RTP each way per call (default 30)")
    ap.add_argument("--users", type=int, default=1, help="1: the number rings user u0; N: a ring group of N")
    ap.add_argument("--tolerance", type=float, default=1.0,
                    help="a WAV may be this much longer than --hold (s, default 1.0)")
    ap.add_argument("--rss-bound", type=float, default=16.0,
                    help="flat: rss_after <= rss_start + this (for each worker of a cluster) + --rss-per-call x peak "
                         "concurrent calls (MB, default 16)")
    ap.add_argument("--rss-per-call", type=float, default=0.15,
                    help="MB of retained heap allowed per peak concurrent call (default 0.15; measured ~0.11)")
    ap.add_argument("--rss-cap", type=float, default=4096,
                    help="SIGKILL the B2BUA if its RSS passes this (MB, default 4096; 0: no cap)")
    ap.add_argument("--min-free-gb", type=float, default=10,
                    help="stop placing calls when the recordings' disk has less free (GB, default 10)")
    ap.add_argument("--after", type=float, default=30.0, help="seconds sampled after the last call (default 30)")
    ap.add_argument("--drain", type=float, default=30.0, help="seconds SIPp may take past the last call's hold")
    ap.add_argument("--sample", type=float, default=2.0, help="RSS sampling interval (s)")
    ap.add_argument("--report", type=float, default=10.0, help="progress line interval (s)")
    ap.add_argument("--rtp-threadtasks", type=int, default=20, help="SIPp -rtp_threadtasks (calls per RTP thread)")
    ap.add_argument("--no-audio-check", dest="audio_check", action="store_false",
                    help="skip reading every WAV for gaps (lengths and sidecars are still checked)")
    ap.add_argument("--timeout", type=float, help="hard bound on the whole run (s); default: computed")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, SIPp stats, WAVs)")
    ap.add_argument("--python", default=str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists()
                    else sys.executable, help="the Python that runs the B2BUA")
    ap.add_argument("--sipp-trace", action="store_true", help="SIPp -trace_msg logs (short runs only)")
    ap.add_argument("--workers", type=int, default=0,
                    help="run `b2bua cluster` with N workers behind Kamailio (SIPp talks to the edge) instead of `b2bua run`")
    ap.add_argument("--kill-worker-at", type=float, metavar="SECONDS",
                    help="with --workers: kill -9 one worker this many seconds after the first call; then only the "
                         "calls up on it may fail, and its WAVs must be repaired at its restart")
    ap.add_argument("--kill-worker", type=int, default=0, metavar="N", help="which worker --kill-worker-at kills (default 0)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the B2BUA (or the cluster) to core 0 and SIPp to core 1: all share every core")
    a = ap.parse_args()
    global TRACE_MSG, PIN
    TRACE_MSG = a.sipp_trace
    PIN = a.pin
    if a.users < 1 or a.rate <= 0 or a.minutes <= 0 or a.hold <= 0:
        ap.error("--users, --rate, --minutes and --hold must be positive")
    if a.workers < 0 or (a.kill_worker_at is not None and not 0 <= a.kill_worker < a.workers):
        ap.error("--kill-worker-at needs --workers N and --kill-worker in 0..N-1")
    if not shutil.which("sipp"):
        ap.error("sipp is not installed (Debian: apt-get install sip-tester)")
    total_calls = a.rate * a.minutes * 60
    timeout = a.timeout or (60 + a.minutes * 60 + a.hold + a.drain + a.after + 60 + 0.02 * total_calls)
    deadline = time.monotonic() + timeout
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    result: dict = {}

    def on_alarm(signum, frame):
        raise Deadline()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(timeout) + 5)  # a backstop if a wait ever ignores the deadline
    try:
        result = run(a, workdir, deadline)
    except Deadline:
        log(f"time bound of {timeout:.0f}s reached: stopping everything")
        result = {"error": "timeout"}
    except Exception as exc:  # noqa: BLE001 - report, clean up, exit non-zero
        log(f"failed: {exc}")
        result = {"error": str(exc)[:500]}
    finally:
        signal.alarm(0)
        Proc.kill_all()
        if a.keep or "error" in result:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    keys = ("calls", "failed", "rss_start_mb", "rss_peak_mb", "rss_after_mb", "cpu_seconds", "wav_ok", "wavs")
    if "error" not in result:
        print(f"calls={result['calls']} ok={result['succeeded']} failed={result['failed']} "
              f"(uac failed {result['uac_failed']}, unfinished {result['uac_unfinished']}, uas failed {result['uas_failed']}) | "
              f"b2bua cpu={result['cpu_seconds']}s ({result['cpu_percent']}%, {result['cpu_percent_steady']}% at plateau) rss start/peak/after="
              f"{result['rss_start_mb']}/{result['rss_peak_mb']}/{result['rss_after_mb']} MB "
              f"flat={result['rss_flat']} (bound +{result['rss_bound_mb']} MB) slope={result['rss_slope_mb_per_min']} MB/min | "
              f"wavs={result['wavs']} ok={result['wav_ok']} length {result['length_min']}..{result['length_max']} s "
              f"gaps mean={result['audio_gap_mean']} max={result['audio_gap_max']} | "
              f"setup {result['setup_ms_mean']} ms (sd {result['setup_ms_stdev']}), bye {result['bye_ms_mean']} ms | "
              f"sipp cpu={result['sipp_cpu_seconds']}s retrans={result['retransmissions']} | "
              f"others on core 0: {result['core0_other_percent']}%")
        if result.get("stopped"):
            print(f"  stopped early: {result['stopped']}")
        if result.get("workers"):
            print(f"  cluster: {result['workers']} workers behind Kamailio; edge cpu={result['edge_cpu_seconds']}s "
                  f"({result['edge_cpu_ms_per_call']} ms a call)")
        k, r = result.get("kill"), result.get("recovered")
        if k:
            print(f"  kill -9 worker {k['killed_worker']} at {k['killed_at_s']} s: {k['killed_calls_up']} of its calls up "
                  f"({k['killed_calls_up_answered']} answered, {k['killed_calls_failed_over']} failed over to another); "
                  f"failed calls {result['uac_failed']} (their phone side {result['uas_failed']}), all the killed worker's: "
                  f"{k['only_killed_worker_failed']}; "
                  f"every other call completed: {k['other_calls_completed']}; its {r['wavs']} WAVs repaired "
                  f"(sidecar recovered, {r['length_min']}..{r['length_max']} s): {r['ok']}")
            for kind, p in r["problems"].items():
                print(f"  killed worker's wav problem: {kind}: {p['count']}, e.g. {'; '.join(p['e.g.'])}")
        for kind, p in result["wav_problems"].items():
            print(f"  wav problem: {kind}: {p['count']}, e.g. {'; '.join(p['e.g.'])}")
    out = {k: result.get(k) for k in keys} | {k: v for k, v in result.items() if k not in keys}
    print(json.dumps(out))
    if result.get("kill"):  # the killed worker's calls may fail; nothing else may
        ok = ("error" not in result and result["kill"]["only_killed_worker_failed"] and result["kill"]["other_calls_completed"]
              and result["wav_ok"] and result["recovered"]["ok"] and result["rss_flat"])
    else:
        ok = "error" not in result and result["failed"] == 0 and result["wav_ok"] and result["rss_flat"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
