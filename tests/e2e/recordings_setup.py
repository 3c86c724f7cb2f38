"""A `b2bua run` with `[http]`, tokens and (optionally) a webhook, and real recorded calls
through it: the shared set-up of the recordings API, webhook and page tests.

Calls: (A) an inbound call from a SIPp trunk answered by baresip alice; (B) an inbound
call from PyTrunk in which alice presses *1 twice (a paused span); (C) an outbound call
alice places to the (auto-answering) PyTrunk.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.pcap import Tone, write_pcap
from tests.e2e.peers import B2buaProcess, Baresip, Ports, PyTrunk, Sipp, alice_line, free_port

READ_TOKEN = "e2e-read-token-9f2c"
ADMIN_TOKEN = "e2e-admin-token-41d7"
WEBHOOK_SECRET = "e2e-webhook-secret"
DDI = "441632960000"


def flows(ports: Ports, pytrunk: str, http_port: int, webhook_url: str | None = None, extra: str = "",
          http_extra: str = "") -> str:
    text = f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
{extra}
[organisation]
name = "Test"
{alice_line(pytrunk, more_sources=(ports.trunk,), alice_extra='record_outbound = "yes"' + chr(10))}[http]
listen = "127.0.0.1:{http_port}"
{http_extra}
[[api_tokens]]
name = "viewer"
token_sha256 = "{hashlib.sha256(READ_TOKEN.encode()).hexdigest()}"
scope = "read"
[[api_tokens]]
name = "ops-admin"
token_sha256 = "{hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()}"
scope = "admin"
'''
    if webhook_url:
        text += f'''
[[webhooks]]
url = "{webhook_url}"
secret = "{WEBHOOK_SECRET}"
'''
    return text


@dataclass
class Pbx:
    proc: B2buaProcess
    ports: Ports
    http_port: int
    trunk: PyTrunk
    tmp_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def http(self, path: str, token: str | None = READ_TOKEN, method: str = "GET",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.base + path, method=method, headers=dict(headers or {}))
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str, token: str | None = READ_TOKEN) -> Any:
        status, _, body = self.http(path, token)
        assert status == 200, (status, body)
        return json.loads(body)

    def sipp_call(self, seconds: float = 2.5) -> None:
        """(A) SIPp trunk -> DDI -> alice, `seconds` of 440 Hz."""
        Sipp("uac_call.xml", self.tmp_path, remote=self.proc.sip_address, port=self.ports.trunk_port, service=DDI,
             params={"pcap": write_pcap(self.tmp_path / f"in-{time.monotonic_ns()}.pcap", [Tone(440, seconds)]),
                     "pause_ms": int(seconds * 1000) + 500}).run().check()

    def paused_call(self, alice: Baresip) -> None:
        """(B) PyTrunk -> DDI -> alice; alice presses *1 at ~1 s and ~2.2 s; BYE at ~3.5 s."""
        call = self.trunk.call(self.proc.sip_address, DDI)
        assert call.wait_answered(10) == 200
        answered = time.monotonic()
        call.rtp.send_tone(440, 4.0, remote=call.remote_media)
        alice.wait_for("established", 5)
        for t, action in ((1.0, "*1"), (2.2, "*1"), (3.5, "bye")):
            time.sleep(max(0.0, answered + t - time.monotonic()))
            if action == "bye":
                assert call.bye() == 200
            else:
                alice.send_dtmf(action)
        alice.wait_for("closed", 5)

    def outbound_call(self, alice: Baresip) -> None:
        """(C) alice dials 447700900999 out through the trunk, which answers."""
        alice.dial("447700900999")
        call = self.trunk.wait_for_call(10)
        alice.wait_for("established", 5)
        call.rtp.send_tone(440, 2.0, remote=call.remote_media)
        time.sleep(1.5)
        alice.hangup()
        call.wait_ended(5)


def start_pbx(tmp_path: Path, webhook_url: str | None = None, *, server_extra: str = "", tail: str = "",
              name: str = "b2bua", http_extra: str = "") -> Pbx:
    """`server_extra`: more [server] keys; `http_extra`: more [http] keys; `tail`: more
    sections at the end of flows.toml."""
    ports = Ports.allocate()
    trunk = PyTrunk(auto_answer=True)
    http_port = free_port("tcp")
    proc = B2buaProcess(flows(ports, trunk.address, http_port, webhook_url, server_extra, http_extra) + tail,
                        tmp_path, name=name)
    proc.start()
    return Pbx(proc, ports, http_port, trunk, tmp_path)


def wait_indexed(pbx: Pbx, count: int, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        listed = pbx.json("/api/recordings?limit=100")["recordings"]
        if len(listed) >= count or time.monotonic() > deadline:
            return listed
        time.sleep(0.1)
