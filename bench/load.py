"""Whole calls under load: N real calls through the B2BUA (or rtpengine), RTP on every leg.

    python bench/load.py --calls 500 --seconds 20                 # this project, recording on
    python bench/load.py --calls 500 --seconds 20 --record off
    python bench/load.py --calls 500 --seconds 20 --peer rtpengine --record off|on
    python bench/load.py --table --seconds 20                      # the issue-6 table, one run
    python bench/load.py --calls 500 --seconds 20 --http-poll 20   # + the page/API polled at 20 requests/s
    python bench/load.py --calls 200 --workers 2 --cpu-quota 0.5   # through b2bua cluster (bench/cluster_load.py)
    python bench/load.py --calls 300 --seconds 10 --memory         # where each call's memory goes (traced: slow)

For the B2BUA: N users register (digest auth), a trunk calls N numbers, each rings one
user who answers; then every leg streams G.711 at 20 ms pacing (2 x 50 packets/s per call)
from a generator using sendmmsg/recvmmsg, pinned to the other core (it prints its own
capacity, to show it is not the bottleneck). The B2BUA is pinned to core 0. After S
seconds the trunk hangs up every call and every WAV's length is checked.

For rtpengine (Debian rtpengine-daemon, userspace forwarding): the same streams through
calls set up over its ng control protocol (offer/answer/delete, bencode over UDP), with
recording off or on (pcap recording to a directory).

With --http-poll R (issue 18), the B2BUA also serves [http] with 1,000 earlier recordings
in its index, and a client on the load core requests, R times a second in turn: a page of
50 recordings, /metrics, the page itself and 64 KiB of a WAV (a Range request), while the
calls stream. Compare a run with and without it for the media cost of the HTTP side.

With --memory (issue 17), the B2BUA runs under tracemalloc (bench/traced_b2bua.py): a
snapshot once it listens and one while the calls stream; printed: the bytes per call each
owner (SIP transactions, dialogs, registrar, media leg table, timelines, ...) added between
them, and the allocation sites that grew most. Tracing slows the B2BUA several times: loss,
CPU and RSS of such a run mean nothing; run it with a few hundred calls.

Loopback only, bounded in time and count. The last line is one JSON object with keys
calls, loss, cpu_percent, rss_mb (peak), rss_up_mb (every call up, before the audio
starts) and rss_streaming_mb (the median while the calls stream: the calls' state once
audio flows; the peak adds what a saturated B2BUA holds while it falls behind: late
flushes, the disk writer's backlog), wav_ok (and http when polled).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from rtp import g711  # noqa: E402
from rtp.batch_io import BatchSocket, FixedStreams, recv_count  # noqa: E402

LOCAL = "127.0.0.1"
PTIME = 0.02
# 160 bytes of PCMU: 20 ms of a 400 Hz tone (eight whole cycles, so packets repeat seamlessly)
PAYLOAD = g711.encode((8000 * np.sin(2 * np.pi * 400 * np.arange(160) / 8000)).astype(np.int16), g711.PCMU)
TONE_NONZERO = float(np.count_nonzero(g711.decode(PAYLOAD, g711.PCMU))) / 160  # its zero crossings are silent samples
CLK_TCK = os.sysconf("SC_CLK_TCK")
B2BUA_CORE, LOAD_CORE = 0, 1


# -- small helpers ------------------------------------------------------------------------


def stop(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM (calls get BYE, recordings are finalised), SIGKILL past `grace` seconds."""
    proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    if proc.poll() is None:
        proc.kill()


def media_range(width: int, taken: set[int] = frozenset()) -> tuple[int, int]:
    """A range of `width` UDP ports nobody holds now (another engineer's bench or test may run
    beside this one: a fixed range made two runs refuse each other's calls), from a place
    that depends on our pid, holding none of `taken`."""
    span = 60000 - 20000 - width
    start = 20000 + (os.getpid() * 7919) % max(span, 1) // 2 * 2
    for k in range(0, span, 2000):
        low = 20000 + (start - 20000 + k) % max(span, 1) // 2 * 2
        if any(low <= t <= low + width for t in taken):
            continue
        try:
            for port in range(low, low + width + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return low, low + width
    raise RuntimeError(f"no {width} free UDP ports in 20000-60000")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOCAL, 0))
        return s.getsockname()[1]


def udp(port: int = 0, rcvbuf: int = 8 << 20, host: str = LOCAL) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
    s.bind((host, port))
    return s


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process: Python and numpy vs the kernel's share."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def run_delay(pid: int) -> float:
    """Seconds the process's threads spent runnable but not running (waiting for a CPU:
    /proc/<pid>/task/*/schedstat, second field). On a shared machine this is what tells a
    B2BUA starved of its pinned core (loss at a low cpu_percent) from one that is slow."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def rss_now_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def leg_ip(side: int, i: int) -> str:
    """Each generated party's media address: its own loopback IP (127.side.x.y), one port.

    Like real phones and carrier SBCs, every stream has its own source address; a relay
    that shares ports (rtp.mux) must tell them apart by it. The generator still sends them
    all from one socket (IP_PKTINFO picks the source IP per datagram, rtp.batch_io)."""
    i += 1
    return f"127.{side}.{i >> 8}.{i & 255}"


def sdp(port: int, session: int, ip: str = LOCAL) -> str:
    return (f"v=0\r\no=load {session} 1 IN IP4 {ip}\r\ns=load\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")


def sdp_port(text: str) -> int:
    m = re.search(r"^m=audio (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


def header(text: str, name: str) -> str:
    m = re.search(rf"^{name}\s*:\s*(.*?)\r?$", text, re.M | re.I)
    return m.group(1) if m else ""


def sip_message(start: str, headers: list[str], body: str = "") -> bytes:
    ctype = ["Content-Type: application/sdp"] if body else []
    return ("\r\n".join([start, *headers, *ctype, f"Content-Length: {len(body.encode())}", "", body])).encode()


# -- the media generator (its own process, on the other core) -------------------------------

def generate(socks: list[socket.socket], targets: list[list[tuple[str, int]]], sources: list[list[str]],
             seconds: float, conn) -> None:
    """Send 20 ms-paced RTP from socks[k] (from sources[k][i]) to targets[k][i]; count what comes back."""
    import numpy as np

    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOAD_CORE})
    receivers = [BatchSocket(s, 256) for s in socks]
    senders = []
    for k, (sock, addrs) in enumerate(zip(socks, targets)):
        fs = FixedStreams(sock, addrs, 12 + len(PAYLOAD), sources[k])
        fs.buffer[:, 0] = 0x80
        ssrc = (np.arange(len(fs.buffer), dtype=np.uint32) | np.uint32(k << 24)).astype(">u4")
        fs.buffer[:, 8:12] = ssrc.view(np.uint8).reshape(-1, 4)
        fs.buffer[:, 12:] = np.frombuffer(PAYLOAD, dtype=np.uint8)
        senders.append(fs)
    seq = 0
    offered = received = 0
    busy = 0.0
    waited0 = run_delay(os.getpid())
    start = time.perf_counter()
    next_tick = start
    end = start + seconds

    def drain() -> int:
        got = 0
        for r in receivers:
            while True:
                n = recv_count(r)
                got += n
                if n < r.batch:
                    break
        return got

    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if now < next_tick:
            received += drain()
            sleep = next_tick - time.perf_counter()
            if sleep > 0:
                time.sleep(min(sleep, 0.003))
            continue
        t0 = time.perf_counter()
        ts = (seq * 160) & 0xFFFFFFFF
        header = struct.pack("!HI", seq & 0xFFFF, ts)
        for fs in senders:
            if fs.n:
                fs.buffer[:, 2:8] = np.frombuffer(header, dtype=np.uint8)
                offered += fs.send()
        received += drain()
        busy += time.perf_counter() - t0
        seq += 1
        next_tick += PTIME
    drain_until = time.perf_counter() + 0.3
    while time.perf_counter() < drain_until:
        received += drain()
        time.sleep(0.01)
    conn.send({"offered": offered, "received": received, "busy_s": busy, "wall_s": time.perf_counter() - start,
               "waited_s": run_delay(os.getpid()) - waited0})


def run_generator(socks, targets, sources, seconds):
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=generate, args=(socks, targets, sources, seconds, child))
    proc.start()
    return proc, parent


# -- the B2BUA under load -------------------------------------------------------------------

class SipLoad:
    """Registers N users, places N trunk calls, answers them, hangs them up."""

    def __init__(self, sip_port: int, trunk: socket.socket, phone: socket.socket, trunk_media: int, phone_media: int):
        self.server = (LOCAL, sip_port)
        self.trunk, self.phone = trunk, phone
        self.trunk_media, self.phone_media = trunk_media, phone_media
        self.run = os.urandom(3).hex()
        self.answered_at: dict[int, float] = {}  # trunk call i -> when its 200 OK arrived
        self.bye_at: dict[int, float] = {}  # ... when we sent its BYE
        self.bye_ok_at: dict[int, float] = {}  # ... and when the B2BUA's 200 OK for it arrived

    def _recv(self, timeout: float):
        ready, _, _ = select.select([self.trunk, self.phone], [], [], timeout)
        for s in ready:
            while True:
                try:
                    data, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                yield s, data.decode("utf-8", "replace"), addr

    def register(self, n: int, realm: str, deadline: float) -> int:
        phone_port = self.phone.getsockname()[1]
        self.phone.setblocking(False)
        self.trunk.setblocking(False)
        uri = f"sip:{LOCAL}:{self.server[1]}"

        def reg(i: int, cseq: int, auth: str = "") -> bytes:
            return sip_message(f"REGISTER {uri} SIP/2.0", [
                f"Via: SIP/2.0/UDP {LOCAL}:{phone_port};branch=z9hG4bK{self.run}r{i}c{cseq};rport",
                f"From: <sip:u{i}@{LOCAL}>;tag=r{i}", f"To: <sip:u{i}@{LOCAL}>", f"Call-ID: reg-{i}-{self.run}",
                f"CSeq: {cseq} REGISTER", f"Contact: <sip:u{i}@{LOCAL}:{phone_port}>", "Expires: 3600",
                "Max-Forwards: 70", *([auth] if auth else [])])

        done: set[int] = set()
        pending = list(range(n))
        # As a phone does (RFC 3261 §17.1.2.2 Timer E): a REGISTER with no answer is sent
        # again. Until one phone has registered from this IP the B2BUA answers it as a
        # stranger, at most `stranger_answers_per_second` (bursts of 5x) (issue 16).
        unanswered: dict[int, float] = {}
        while pending or len(done) < n:
            for i in pending[:200]:
                self.phone.sendto(reg(i, 1), self.server)
                unanswered[i] = time.monotonic()
            pending = pending[200:]
            for i, sent in list(unanswered.items()):
                if time.monotonic() - sent > 0.5:
                    self.phone.sendto(reg(i, 1), self.server)
                    unanswered[i] = time.monotonic()
            for _, text, _ in self._recv(0.05):
                m = re.search(r"Call-ID: reg-(\d+)-", text)
                if not m:
                    continue
                i = int(m.group(1))
                unanswered.pop(i, None)
                if text.startswith("SIP/2.0 401"):
                    nonce = re.search(r'nonce="([^"]+)"', text).group(1)
                    ha1 = hashlib.md5(f"u{i}:{realm}:pw{i}".encode()).hexdigest()
                    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
                    resp = hashlib.md5(f"{ha1}:{nonce}:00000001:c{i}:auth:{ha2}".encode()).hexdigest()
                    auth = (f'Authorization: Digest username="u{i}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                            f'response="{resp}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c{i}"')
                    self.phone.sendto(reg(i, 2, auth), self.server)
                elif text.startswith("SIP/2.0 200"):
                    done.add(i)
            if time.monotonic() > deadline:
                break
        return len(done)

    def call(self, n: int, rate: float, deadline: float) -> tuple[list[tuple[int, int]], list[int], dict]:
        """Place n calls at `rate` per second; returns (B2BUA ports facing the trunk, facing the phones, dialogs)."""
        trunk_port = self.trunk.getsockname()[1]
        phone_port = self.phone.getsockname()[1]
        a_ports: dict[int, int] = {}
        b_ports: list[int] = []
        dialogs: dict[int, tuple[str, str, str]] = {}  # i -> (to header with tag, contact uri, call-id)
        b_index: dict[str, int] = {}  # B-leg Call-ID -> its stream (and media IP) index
        sent = 0
        began = time.monotonic()
        retries: list[tuple[float, int]] = []  # (when, call i): refused with 503, tried again
        attempt: dict[int, int] = {}
        self.refused = 0

        def invite(i: int) -> None:
            ddi = str(4400000000 + i)
            k = attempt.get(i, 0)
            self.trunk.sendto(sip_message(f"INVITE sip:{ddi}@{LOCAL}:{self.server[1]} SIP/2.0", [
                f"Via: SIP/2.0/UDP {LOCAL}:{trunk_port};branch=z9hG4bK{self.run}i{i}k{k};rport",
                f"From: <sip:caller@{LOCAL}:{trunk_port}>;tag=t{i}k{k}", f"To: <sip:{ddi}@{LOCAL}:{self.server[1]}>",
                f"Call-ID: load-{i}-{self.run}-{k}", "CSeq: 1 INVITE", f"Contact: <sip:caller@{LOCAL}:{trunk_port}>",
                "Max-Forwards: 70"], sdp(self.trunk_media, i, leg_ip(1, i))), self.server)

        while len(a_ports) < n and time.monotonic() < deadline:
            due = min(n, int((time.monotonic() - began) * rate) + 1)
            while sent < due:
                invite(sent)
                sent += 1
            while retries and retries[0][0] <= time.monotonic():
                invite(retries.pop(0)[1])
            for sock, text, addr in self._recv(0.01):
                if sock is self.phone and text.startswith("INVITE "):
                    call_id = header(text, "Call-ID")
                    if call_id not in b_index:
                        b_index[call_id] = len(b_ports)
                        b_ports.append(sdp_port(text))
                    vias = [f"Via: {v}" for v in re.findall(r"^Via\s*:\s*(.*?)\r?$", text, re.M | re.I)]
                    self.phone.sendto(sip_message("SIP/2.0 200 OK", [
                        *vias, f"From: {header(text, 'From')}", f"To: {header(text, 'To')};tag=p{len(b_ports)}",
                        f"Call-ID: {call_id}", f"CSeq: {header(text, 'CSeq')}",
                        f"Contact: <sip:phone@{LOCAL}:{phone_port}>"],
                        sdp(self.phone_media, len(b_ports), leg_ip(2, b_index[call_id]))), addr)
                elif sock is self.trunk and text.startswith("SIP/2.0 503") and "INVITE" in header(text, "CSeq"):
                    # Overloaded (rtp.admission): ACK the refusal and call again shortly, as
                    # a carrier honouring Retry-After would (sooner: the bench wants N calls).
                    m = re.search(r"load-(\d+)-\w+-(\d+)", header(text, "Call-ID"))
                    if not m or attempt.get(int(m.group(1)), 0) != int(m.group(2)):
                        continue
                    i, k = int(m.group(1)), int(m.group(2))
                    self.trunk.sendto(sip_message(f"ACK sip:{4400000000 + i}@{LOCAL}:{self.server[1]} SIP/2.0", [
                        f"Via: SIP/2.0/UDP {LOCAL}:{trunk_port};branch=z9hG4bK{self.run}i{i}k{k};rport",
                        f"From: <sip:caller@{LOCAL}:{trunk_port}>;tag=t{i}k{k}", f"To: {header(text, 'To')}",
                        f"Call-ID: {header(text, 'Call-ID')}", "CSeq: 1 ACK", "Max-Forwards: 70"]), addr)
                    self.refused += 1
                    attempt[i] = k + 1
                    retries.append((time.monotonic() + 1.0, i))
                elif sock is self.trunk and text.startswith("SIP/2.0 200") and "INVITE" in header(text, "CSeq"):
                    m = re.search(r"load-(\d+)-", header(text, "Call-ID"))
                    if not m:
                        continue
                    i = int(m.group(1))
                    to = header(text, "To")
                    contact = re.search(r"<([^>]+)>", header(text, "Contact")).group(1)
                    call_id = header(text, "Call-ID")
                    k = attempt.get(i, 0)
                    self.trunk.sendto(sip_message(f"ACK {contact} SIP/2.0", [
                        f"Via: SIP/2.0/UDP {LOCAL}:{trunk_port};branch=z9hG4bK{self.run}a{i}k{k};rport",
                        f"From: <sip:caller@{LOCAL}:{trunk_port}>;tag=t{i}k{k}", f"To: {to}",
                        f"Call-ID: {call_id}", "CSeq: 1 ACK", "Max-Forwards: 70"]), addr)
                    if i not in a_ports:
                        self.answered_at[i] = time.monotonic()
                        a_ports[i] = sdp_port(text.split("\r\n\r\n", 1)[1])
                        dialogs[i] = (to, contact, call_id, k)
        return list(a_ports.items()), b_ports, dialogs

    def hangup(self, dialogs: dict, deadline: float) -> int:
        trunk_port = self.trunk.getsockname()[1]
        for i, (to, contact, call_id, k) in dialogs.items():
            self.bye_at[i] = time.monotonic()
            self.trunk.sendto(sip_message(f"BYE {contact} SIP/2.0", [
                f"Via: SIP/2.0/UDP {LOCAL}:{trunk_port};branch=z9hG4bK{self.run}b{i};rport",
                f"From: <sip:caller@{LOCAL}:{trunk_port}>;tag=t{i}k{k}", f"To: {to}", f"Call-ID: {call_id}",
                "CSeq: 2 BYE", "Max-Forwards: 70"]), self.server)
        ended = set()
        while len(ended) < len(dialogs) and time.monotonic() < deadline:
            for sock, text, addr in self._recv(0.05):
                if sock is self.trunk and text.startswith("SIP/2.0 200") and "BYE" in header(text, "CSeq"):
                    call_id = header(text, "Call-ID")
                    ended.add(call_id)
                    m = re.search(r"load-(\d+)-", call_id)
                    if m:
                        self.bye_ok_at.setdefault(int(m.group(1)), time.monotonic())
                elif sock is self.phone and text.startswith("BYE "):
                    vias = [f"Via: {v}" for v in re.findall(r"^Via\s*:\s*(.*?)\r?$", text, re.M | re.I)]
                    self.phone.sendto(sip_message("SIP/2.0 200 OK", [
                        *vias, f"From: {header(text, 'From')}", f"To: {header(text, 'To')}",
                        f"Call-ID: {header(text, 'Call-ID')}", f"CSeq: {header(text, 'CSeq')}"]), addr)
        return len(ended)


def b2bua_config(n: int, sip_port: int, trunk_port: int, rtp: tuple[int, int], record: bool, recordings: Path,
                 media_sockets: str = "default", http_port: int = 0) -> str:
    sockets = "" if media_sockets == "default" else f'media_sockets = "{media_sockets}"\n'  # default: as users get it
    lines = [f'''[server]
listen = "{LOCAL}:{sip_port}"
{sockets}media_ip = "{LOCAL}"
rtp_ports = "{rtp[0]}-{rtp[1]}"
recordings_dir = "{recordings}"
realm = "load"
max_calls = {n}
[organisation]
name = "Load"
call_recording = true
[security]
max_auth_failures = 1000000
[[trunks]]
name = "load"
sources = ["{LOCAL}:{trunk_port}"]
uri = "sip:{LOCAL}:{trunk_port}"
''']
    if http_port:
        lines.append(f'[http]\nlisten = "{LOCAL}:{http_port}"\n[[api_tokens]]\nname = "load"\n'
                     f'token_sha256 = "{hashlib.sha256(HTTP_TOKEN.encode()).hexdigest()}"\nscope = "read"\n')
    rec = "yes" if record else "no"
    for i in range(n):
        lines.append(f'[[numbers]]\nddi = "{4400000000 + i}"\nrecord = "{rec}"\nto = "user:u{i}"\n'
                     f'[[users]]\nname = "u{i}"\npassword = "pw{i}"\n')
    return "\n".join(lines)


def check_wavs(wavs: list[Path], load: SipLoad, expected: int, seconds: float) -> tuple[bool, list[float], float]:
    """Every call left one WAV as long as it was up: from its answer to somewhere between our
    BYE and the B2BUA's 200 OK for it (a mass hangup queues), 0.5 s either side; and how
    much of the tone streamed meanwhile is in it: the mean, over calls and both channels, of
    the non-silent samples as a fraction of the generator's `seconds`."""
    import soundfile

    lengths, present, ok, bad = [], [], len(wavs) == expected, []
    if not ok:
        print(f"check_wavs: {len(wavs)} WAVs, expected {expected}", file=sys.stderr)
    for wav in wavs:
        side = json.loads(wav.with_suffix(".json").read_text())
        i = int(side["ddi"]) - 4400000000
        samples, _ = soundfile.read(wav, dtype="int16")
        length = len(samples) / 8000
        lengths.append(length)
        answered = load.answered_at.get(i, 0.0)
        shortest = load.bye_at.get(i, 0.0) - answered - 0.5
        longest = load.bye_ok_at.get(i, load.bye_at.get(i, 0.0)) - answered + 0.5
        if not shortest <= length <= longest:
            ok = False
            bad.append(f"{wav.name}: {length:.2f} s, expected {shortest:.2f}-{longest:.2f} s")
        present += [float(np.count_nonzero(samples[:, ch])) / (seconds * 8000 * TONE_NONZERO) for ch in (0, 1)]
    if bad:
        print(f"check_wavs: {len(bad)} WAVs of the wrong length, e.g. " + "; ".join(bad[:3]), file=sys.stderr)
    return ok, lengths, round(float(np.mean(present)), 4) if present else 0.0


def read_lateness(log_path: Path, start: int, end: int) -> dict:
    """p50/p99/max of how late the B2BUA's media reads ran while the generator streamed:
    the `media event=lateness what=read` lines it logged in [start, end) of its log (rtp.lateness),
    the first one left out (its window began before the streams)."""
    from rtp.lateness import Lateness

    with open(log_path, "rb") as f:
        f.seek(start)
        text = f.read(max(end - start, 0)).decode("utf-8", "replace")
    windows = [Lateness.parse(ln.split("what=read", 1)[1]) for ln in text.splitlines() if "event=lateness what=read" in ln]
    total = Lateness()
    for w in windows[1:]:
        total.merge(w)
    if not total.total:
        return {}
    return {"read_p50_ms": total.percentile(50), "read_p99_ms": total.percentile(99), "read_max_ms": round(total.max_ms, 1),
            "reads": total.total}


HTTP_TOKEN = "load-bench-token"


def seed_recordings(recordings: Path, count: int = 1000) -> list[str]:
    """`count` finished recordings of a past day (one second of silence each), indexed at start."""
    folder = recordings / "2026" / "01" / "01"
    folder.mkdir(parents=True, exist_ok=True)
    wav = (b"RIFF" + struct.pack("<I", 36 + 32000) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 2, 8000, 32000, 4, 16)
           + b"data" + struct.pack("<I", 32000) + bytes(32000))
    ids = []
    for i in range(count):
        call_id = f"20260101T0000{i:06d}-seed"
        (folder / f"{call_id}.wav").write_bytes(wav)
        (folder / f"{call_id}.json").write_text(json.dumps({
            "call_id": call_id, "direction": "inbound", "from": "sip:+447700900000@load", "to": "sip:4400000000@load",
            "ddi": "4400000000", "user": "u0", "started": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.000Z",
            "ended": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}.999Z", "sample_rate": 8000, "channels": 2,
            "pause": "silence", "segments": [[0.0, 1.0]], "events": []}))
        ids.append(call_id)
    return ids


def http_poller(port: int, rate: float, stop, out) -> None:
    """R requests a second in turn (listing, /metrics, page, a WAV range) on one keep-alive
    connection; sends back (requests, errors, median ms, p95 ms)."""
    import http.client

    conn = http.client.HTTPConnection(LOCAL, port, timeout=10)
    auth = {"Authorization": f"Bearer {HTTP_TOKEN}"}
    paths = [("/api/recordings?limit=50", auth), ("/metrics", {}), ("/", {}),
             ("/api/recordings/20260101T0000000007-seed.wav", {**auth, "Range": "bytes=0-65535"})]
    done = errors = 0
    times = []
    t0 = time.monotonic()
    while not stop.is_set():
        path, headers = paths[done % len(paths)]
        t = time.monotonic()
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status >= 400:
                errors += 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(LOCAL, port, timeout=10)
        times.append((time.monotonic() - t) * 1000)
        done += 1
        delay = t0 + done / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    times.sort()
    out.send((done, errors, times[len(times) // 2] if times else 0.0, times[int(0.95 * (len(times) - 1))] if times else 0.0))


def run_b2bua(calls: int, seconds: float, record: bool, workdir: Path, media_sockets: str = "default",
              http_poll: float = 0.0, memory: bool = False) -> dict:
    sip_port = free_port()
    trunk, phone = udp(), udp()
    trunk_media, phone_media = udp(host="0.0.0.0"), udp(host="0.0.0.0")  # every 127.x.y.z: see leg_ip
    taken = {sip_port, *(s.getsockname()[1] for s in (trunk, phone, trunk_media, phone_media))}
    rtp = media_range(calls * 4 + 200, taken)
    recordings = workdir / "recordings"
    config = workdir / "flows.toml"
    http_port = free_port(socket.SOCK_STREAM) if http_poll else 0
    if http_port:
        seed_recordings(recordings)
    config.write_text(b2bua_config(calls, sip_port, trunk.getsockname()[1], rtp, record, recordings, media_sockets,
                                   http_port))
    log = open(workdir / "b2bua.log", "w")
    command = [sys.executable, "-m", "b2bua", "run", "--config", str(config)]
    env = None
    snapshot = workdir / "memory"
    if memory:  # --memory: traced, snapshots on SIGUSR1/SIGUSR2 (bench/traced_b2bua.py)
        command[1:3] = [str(Path(__file__).with_name("traced_b2bua.py"))]
        env = dict(os.environ, B2BUA_SNAPSHOT=str(snapshot))
    proc = subprocess.Popen(command, stdout=log, stderr=log, env=env,
                            preexec_fn=lambda: os.sched_setaffinity(0, {B2BUA_CORE}))
    memory_report = None
    try:
        os.sched_setaffinity(0, {LOAD_CORE})
        wait_listening(sip_port, proc)
        if memory:
            take_snapshot(proc, snapshot, 1)
        load = SipLoad(sip_port, trunk, phone, trunk_media.getsockname()[1], phone_media.getsockname()[1])
        t = time.monotonic()
        registered = load.register(calls, "load", time.monotonic() + 60)
        reg_s = time.monotonic() - t
        t = time.monotonic()
        a_ports, b_ports, dialogs = load.call(calls, rate=250, deadline=time.monotonic() + 60 + calls / 100)
        setup_s = time.monotonic() - t
        rss_up = rss_now_mb(proc.pid)  # every call up, no audio yet: robust to a starved stream
        answered = len(a_ports)
        targets = [[(LOCAL, p) for _, p in a_ports], [(LOCAL, p) for p in b_ports]]
        sources = [[leg_ip(1, i) for i, _ in a_ports], [leg_ip(2, j) for j in range(len(b_ports))]]
        poller = None
        if http_port:
            poll_stop, (poll_out, poll_in) = multiprocessing.Event(), multiprocessing.Pipe(duplex=False)
            poller = multiprocessing.Process(target=http_poller, args=(http_port, http_poll, poll_stop, poll_in))
            poller.start()
        (user0, sys0), wall0, delay0 = cpu_split(proc.pid), time.monotonic(), run_delay(proc.pid)
        log_start = os.path.getsize(workdir / "b2bua.log")
        gen, pipe = run_generator([trunk_media, phone_media], targets, sources, seconds)
        if memory:  # in steady state: the middle of the streaming window
            time.sleep(seconds / 2)
            take_snapshot(proc, snapshot, 2)
            memory_report = memory_breakdown(snapshot, answered)
        streaming_rss = []  # RSS twice a second while the calls stream
        while not pipe.poll(0.5):
            streaming_rss.append(rss_now_mb(proc.pid))
        stats = pipe.recv()
        gen.join()
        user1, sys1 = cpu_split(proc.pid)
        delay = run_delay(proc.pid) - delay0
        http_stats = None
        if poller is not None:
            poll_stop.set()
            requests, errors, median_ms, p95_ms = poll_out.recv()
            poller.join()
            http_stats = {"rate": http_poll, "requests": requests, "errors": errors,
                          "median_ms": round(median_ms, 2), "p95_ms": round(p95_ms, 2)}
        user, system = user1 - user0, sys1 - sys0
        cpu = user + system
        wall = time.monotonic() - wall0
        rss = rss_peak_mb(proc.pid)
        lateness = read_lateness(workdir / "b2bua.log", log_start, os.path.getsize(workdir / "b2bua.log"))
        ended = load.hangup(dialogs, time.monotonic() + 30)
        time.sleep(2.0)
        wavs = sorted(w for w in recordings.rglob("*.wav") if not w.stem.endswith("-seed"))  # not --http-poll's
        wav_ok, lengths, audio = check_wavs(wavs, load, calls if record else 0, seconds)
        recorded_packets = int(sum(lengths) * 50 * 2)
    finally:
        stop(proc, 20)
        log.close()
        for s in (trunk, phone, trunk_media, phone_media):
            s.close()
    offered, received = stats["offered"], stats["received"]
    return {
        "peer": "b2bua" if media_sockets != "per_call" else "b2bua/pc", "record": record, "calls": calls, "registered": registered, "answered": answered, "refused_503": load.refused,
        "ended": ended, "offered": offered, "relayed": received, "recorded": recorded_packets,
        "loss": round(1 - received / offered, 5) if offered else 1.0,
        "cpu_percent": round(100 * cpu / wall, 1), "rss_mb": round(rss, 1), "rss_up_mb": round(rss_up, 1),
        "rss_streaming_mb": round(float(np.median(streaming_rss)), 1) if streaming_rss else 0.0,
        "wav_ok": wav_ok,
        "user_percent": round(100 * user / wall, 1), "sys_percent": round(100 * system / wall, 1),
        "runqueue_wait_percent": round(100 * delay / wall, 1),
        "generator_wait_percent": round(100 * stats["waited_s"] / stats["wall_s"], 1),
        "wavs": len(wavs), "wav_audio": audio, "register_s": round(reg_s, 2), "setup_s": round(setup_s, 2),
        "generator_capacity_pps": round(offered / stats["busy_s"]) if stats["busy_s"] else 0,
        "offered_pps": round(offered / stats["wall_s"]),
        "http": http_stats,
        "memory": memory_report,
        **lateness,
    }


def take_snapshot(proc: subprocess.Popen, snapshot: Path, which: int, timeout: float = 300) -> None:
    """Ask the traced B2BUA for snapshot `which` (1: SIGUSR1, 2: SIGUSR2) and wait for it."""
    done = Path(f"{snapshot}.{which}.done")
    proc.send_signal(signal.SIGUSR1 if which == 1 else signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while not done.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the traced B2BUA wrote no snapshot {which}")
        time.sleep(0.2)


def memory_breakdown(snapshot: Path, calls: int) -> str:
    """What the calls added between the two snapshots, per call, by owner and by line."""
    import tracemalloc

    import traced_b2bua

    before = tracemalloc.Snapshot.load(f"{snapshot}.1")
    after = tracemalloc.Snapshot.load(f"{snapshot}.2")
    calls = max(calls, 1)
    lines = [f"traced memory the {calls} calls added (after listening -> streaming), bytes per call by owner:"]
    total = 0
    for owner, size in traced_b2bua.by_owner(before, after).items():
        lines.append(f"  {size / calls / 1024:8.1f} KB  {owner}")
        total += size
    lines.append(f"  {total / calls / 1024:8.1f} KB  total (allocated; untouched pages of a buffer are not resident)")
    lines.append("allocation sites that grew most (whole process):")
    lines += [f"  {entry}" for entry in traced_b2bua.top_lines(before, after)]
    return "\n".join(lines)


def wait_listening(sip_port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("the B2BUA exited at start")
            s.sendto(sip_message(f"OPTIONS sip:{LOCAL}:{sip_port} SIP/2.0", [
                f"Via: SIP/2.0/UDP {LOCAL}:{s.getsockname()[1] if s.getsockname()[1] else 0};branch=z9hG4bKping",
                "From: <sip:ping@127.0.0.1>;tag=1", f"To: <sip:{LOCAL}>", "Call-ID: ping", "CSeq: 1 OPTIONS"]),
                (LOCAL, sip_port))
            with contextlib.suppress(socket.timeout):
                s.recvfrom(65535)
                return
    raise RuntimeError("the B2BUA did not answer OPTIONS")


# -- rtpengine under the same load -----------------------------------------------------------

def bencode(x) -> bytes:
    if isinstance(x, int):
        return b"i%de" % x
    if isinstance(x, str):
        x = x.encode()
    if isinstance(x, bytes):
        return b"%d:%s" % (len(x), x)
    if isinstance(x, list):
        return b"l" + b"".join(bencode(v) for v in x) + b"e"
    if isinstance(x, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(x.items())) + b"e"
    raise TypeError(type(x))


def ng(sock: socket.socket, addr, command: dict) -> str:
    cookie = os.urandom(4).hex().encode()
    sock.sendto(cookie + b" " + bencode(command), addr)
    data = sock.recv(65535)
    return data.split(b" ", 1)[1].decode("utf-8", "replace")


def run_rtpengine(calls: int, seconds: float, record: bool, workdir: Path) -> dict:
    binary = shutil.which("rtpengine")
    if binary is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "rtpengine-daemon"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        binary = shutil.which("rtpengine")
    if binary is None:
        raise RuntimeError("rtpengine is not installed and apt-get could not install rtpengine-daemon")
    ng_port = free_port()
    rec_dir = workdir / "rtpengine-rec"
    rec_dir.mkdir(exist_ok=True)
    argv = [binary, "--foreground", "--log-stderr", "--table=-1", f"--interface={LOCAL}",
            f"--listen-ng={LOCAL}:{ng_port}", "--port-min=30000", f"--port-max={30000 + calls * 4 + 200}",
            "--num-threads=1", "--log-level=3"]
    if record:
        argv += [f"--recording-dir={rec_dir}", "--recording-method=pcap"]
    log = open(workdir / "rtpengine.log", "w")
    # In its own temp dir: rtpengine 10.5 may dump core on SIGTERM, which must not land in the tree.
    proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=workdir,
                            preexec_fn=lambda: os.sched_setaffinity(0, {B2BUA_CORE}))
    trunk_media, phone_media = udp(host="0.0.0.0"), udp(host="0.0.0.0")  # every 127.x.y.z: see leg_ip
    try:
        os.sched_setaffinity(0, {LOAD_CORE})
        ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ctl.settimeout(2)
        deadline = time.monotonic() + 20
        while True:
            try:
                if "pong" in ng(ctl, (LOCAL, ng_port), {"command": "ping"}):
                    break
            except (socket.timeout, ConnectionRefusedError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("rtpengine did not start: " + (workdir / "rtpengine.log").read_text()[-500:])
            time.sleep(0.2)
        a_ports, b_ports = [], []
        for i in range(calls):
            base = {"call-id": f"c{i}", "from-tag": f"f{i}"}
            flags = {"record call": "yes"} if record else {}
            offer = ng(ctl, (LOCAL, ng_port), {**base, **flags, "command": "offer",
                                                "sdp": sdp(trunk_media.getsockname()[1], i, leg_ip(1, i))})
            b_ports.append(sdp_port(re.search(r"sdp\d+:(.*)", offer, re.S).group(1)))
            answer = ng(ctl, (LOCAL, ng_port), {**base, "command": "answer", "to-tag": f"t{i}",
                                                 "sdp": sdp(phone_media.getsockname()[1], i, leg_ip(2, i))})
            a_ports.append(sdp_port(re.search(r"sdp\d+:(.*)", answer, re.S).group(1)))
        targets = [[(LOCAL, p) for p in a_ports], [(LOCAL, p) for p in b_ports]]
        sources = [[leg_ip(1, i) for i in range(calls)], [leg_ip(2, i) for i in range(calls)]]
        (user0, sys0), wall0 = cpu_split(proc.pid), time.monotonic()
        gen, pipe = run_generator([trunk_media, phone_media], targets, sources, seconds)
        stats = pipe.recv()
        gen.join()
        user1, sys1 = cpu_split(proc.pid)
        user, system = user1 - user0, sys1 - sys0
        cpu = user + system
        wall = time.monotonic() - wall0
        rss = rss_peak_mb(proc.pid)
        for i in range(calls):
            ng(ctl, (LOCAL, ng_port), {"command": "delete", "call-id": f"c{i}", "from-tag": f"f{i}"})
        ctl.close()
    finally:
        stop(proc, 10)
        log.close()
        trunk_media.close()
        phone_media.close()
    offered, received = stats["offered"], stats["received"]
    return {
        "peer": "rtpengine", "record": record, "calls": calls, "offered": offered, "relayed": received,
        "loss": round(1 - received / offered, 5) if offered else 1.0,
        "cpu_percent": round(100 * cpu / wall, 1), "rss_mb": round(rss, 1),
        "wav_ok": None, "generator_capacity_pps": round(offered / stats["busy_s"]) if stats["busy_s"] else 0,
        "offered_pps": round(offered / stats["wall_s"]),
    }


def one(peer: str, calls: int, seconds: float, record: bool, media_sockets: str = "default", http_poll: float = 0.0,
        memory: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="load-") as tmp:
        if peer == "b2bua":
            return run_b2bua(calls, seconds, record, Path(tmp), media_sockets, http_poll, memory)
        return run_rtpengine(calls, seconds, record, Path(tmp))


def line(r: dict) -> str:
    answered = f" answered={r['answered']} refused_503={r['refused_503']}" if "answered" in r else ""
    split = f" (user {r['user_percent']}% sys {r['sys_percent']}%)" if "user_percent" in r else ""
    if "runqueue_wait_percent" in r:  # waiting for its core: other processes had it (a shared machine)
        split += f" waited_for_cpu={r['runqueue_wait_percent']}% (generator {r['generator_wait_percent']}%)"
    up = (f" (calls up, before audio: {r['rss_up_mb']} MB; streaming, median: {r['rss_streaming_mb']} MB)"
          if "rss_up_mb" in r else "")
    late = (f" read_late p50<={r['read_p50_ms']}ms p99<={r['read_p99_ms']}ms max={r['read_max_ms']}ms"
            if "read_p50_ms" in r else "")
    return (f"{r['peer']:<10} record={'on ' if r['record'] else 'off'} calls={r['calls']:<5}{answered} loss={r['loss']:.4%} "
            f"cpu={r['cpu_percent']:>5}%{split} rss={r['rss_mb']:>6} MB{up} offered={r['offered_pps']}/s "
            f"generator_capacity={r['generator_capacity_pps']}/s wav_ok={r.get('wav_ok')} wav_audio={r.get('wav_audio')}{late}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--peer", choices=["b2bua", "rtpengine"], default="b2bua")
    ap.add_argument("--record", choices=["on", "off"], default="on")
    ap.add_argument("--table", action="store_true", help="calls 500/1000/2000 x {b2bua, rtpengine off/on}")
    ap.add_argument("--table-calls", default="500,1000,2000",
                    help="the table's call counts, comma-separated (add the levels where loss starts, "
                         "so the highest with zero loss comes from the same run)")
    ap.add_argument("--media-sockets", choices=["default", "shared", "per_call"], default="default",
                    help="the B2BUA's [server] media_sockets (default: the key left out, as a user gets it: shared)")
    ap.add_argument("--http-poll", type=float, default=0.0, metavar="R",
                    help="also poll the recordings page/API/metrics at R requests/s (issue 18; b2bua only)")
    ap.add_argument("--workers", type=int, default=0,
                    help="run `b2bua cluster` with N workers behind Kamailio instead of `b2bua run`")
    ap.add_argument("--cpu-quota", type=float, default=None,
                    help="with --workers: each worker in its own cgroup with this share of a core (0.5: half)")
    ap.add_argument("--b2bua-core", type=int, choices=[0, 1], default=0,
                    help="the core the B2BUA is pinned to (the generator gets the other): on a shared machine, "
                         "the one other engineers' benchmarks leave free")
    ap.add_argument("--memory", action="store_true",
                    help="trace the B2BUA's allocations: bytes per call by owner (slow: figures of loss/CPU void)")
    args = ap.parse_args()
    global B2BUA_CORE, LOAD_CORE
    B2BUA_CORE, LOAD_CORE = args.b2bua_core, 1 - args.b2bua_core
    if args.workers:
        import cluster_load

        with tempfile.TemporaryDirectory(prefix="load-cluster-") as tmp:
            r = cluster_load.run(args.calls, args.seconds, args.record == "on", Path(tmp), args.workers, args.cpu_quota)
        print(cluster_load.line(r))
        print(json.dumps(r))
        return
    if not args.table:
        r = one(args.peer, args.calls, args.seconds, args.record == "on", args.media_sockets, args.http_poll,
                args.memory)
        print(line(r))
        if r.get("memory"):
            print(r["memory"])
        if r.get("http"):
            print(f"http: {r['http']}")
        keys = ("calls", "loss", "cpu_percent", "runqueue_wait_percent", "rss_mb", "rss_up_mb", "rss_streaming_mb", "wav_ok", "read_p50_ms", "read_p99_ms", "read_max_ms")
        print(json.dumps({k: r[k] for k in keys if k in r} | {"peer": r["peer"], "http": r.get("http")}))
        return
    rows = []
    for calls in sorted({int(c) for c in args.table_calls.split(",") if c.strip()}):
        for peer, record in (("b2bua", True), ("rtpengine", False), ("rtpengine", True)):
            try:
                r = one(peer, calls, args.seconds, record, args.media_sockets if peer == "b2bua" else "default")
            except Exception as exc:  # a failed cell is reported, the table goes on
                r = {"peer": peer, "record": record, "calls": calls, "error": str(exc)[:200]}
                print(f"{peer} record={record} calls={calls}: failed: {exc}")
            else:
                print(line(r), flush=True)
            rows.append(r)
    for peer, record in (("b2bua", True), ("rtpengine", False), ("rtpengine", True)):
        clean = [r["calls"] for r in rows if r["peer"] == peer and r["record"] == record and r.get("loss") == 0.0]
        print(f"highest with zero loss: {peer} record={'on' if record else 'off'}: {max(clean) if clean else 'none'}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
