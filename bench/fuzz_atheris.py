"""Coverage-guided fuzzing (atheris, libFuzzer) of everything that reads network bytes.

    python bench/fuzz_atheris.py [--target sip|framer|rtp|relay|all] [--seconds 60] [--corpus DIR]

Targets, and the only outcomes each may have:
  sip     b2bua.message.parse_message: a message whose fields the B2BUA reads without error,
          or SipParseError with a 4xx/5xx status;
  framer  b2bua.message.StreamFramer fed the input cut into reads: messages, or SipParseError
          (400/513), with the buffer bounded;
  rtp     rtp.packet.RtpPacket.parse: a packet that re-serialises, or None;
  relay   rtp.relay.CallRelay.receive fed datagrams from the input: only well-formed RTP out,
          only to the parties.
Any other exception is a finding: libFuzzer stops, prints it and writes the input as
crash-<sha1> in the working directory. The run is bounded (`--seconds` per target,
libFuzzer's -max_total_time), so CI can run it. Seeds: tests/fixtures/torture/*.sip and
tests/fixtures/sip/*.sip (the corpus directory given, or a temporary one, is seeded with them)
for the SIP targets; the relay target starts from an empty corpus.

Needs `pip install atheris` (a manylinux wheel exists for CPython 3.11 on x86_64; it is in
the project's test extra there). Prints one line per target and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures"
TARGETS = ("sip", "framer", "rtp", "relay")


def _target(name: str):
    """The one-input test function for `name`; imports are instrumented by the caller."""
    from b2bua.message import MAX_MESSAGE_SIZE, SipParseError, StreamFramer, parse_message
    from rtp.packet import RtpPacket

    def check_message(data: bytes) -> None:
        try:
            m = parse_message(data)
        except SipParseError as exc:
            if not (400 <= exc.status <= 599 and exc.reason):
                raise AssertionError(f"bad status {exc.status}") from None
            return
        m.call_id, m.cseq, m.via, m.branch, m.from_tag, m.to_tag, m.headers.get_all("Contact")
        again = parse_message(m.to_bytes())
        if (again.call_id, again.cseq, again.body) != (m.call_id, m.cseq, m.body):
            raise AssertionError("re-serialised message reads differently")

    if name == "sip":
        return check_message

    if name == "framer":
        def framer(data: bytes) -> None:
            f = StreamFramer()
            step = 1 + (data[0] if data else 0)
            try:
                for i in range(0, len(data), step):
                    for message in f.feed(data[i:i + step]):
                        check_message(message)
                    if f.buffered > MAX_MESSAGE_SIZE + step:
                        raise AssertionError("framer buffer over its bound")
            except SipParseError as exc:
                if exc.status not in (400, 513):
                    raise AssertionError(f"bad status {exc.status}") from None
        return framer

    if name == "rtp":
        def rtp(data: bytes) -> None:
            packet = RtpPacket.parse(data)
            if packet is not None and RtpPacket.parse(packet.serialize()) is None:
                raise AssertionError("a parsed packet does not re-parse")
        return rtp

    from tests.test_relay import EXT_ADDR, USER_NAT, USER_SDP, Harness

    sources = (EXT_ADDR, USER_NAT, USER_SDP, ("192.0.2.9", 4000))

    def relay(data: bytes) -> None:
        h = Harness()
        now = 0.0
        # The input is a sequence of datagrams: [control byte][length byte][bytes...]
        i = 0
        while i + 2 <= len(data):
            control, length = data[i], data[i + 1] * 8
            chunk = data[i + 2:i + 2 + length]
            i += 2 + length
            now += 0.005 * (1 + (control >> 4))
            out = h.relay.receive(control & 1, chunk, sources[(control >> 1) & 3], now) + h.relay.tick(now)
            for leg, payload, target in out:
                if target not in (EXT_ADDR, USER_NAT, USER_SDP) or RtpPacket.parse(payload) is None:
                    raise AssertionError("relay sent something that is not RTP to a party")
    return relay


def run_one(name: str, seconds: int, corpus: Path) -> dict:
    """Fuzz one target in a child process (libFuzzer exits the process when done)."""
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, f"-max_total_time={seconds}", "-max_len=8192",
         "-rss_limit_mb=2048", "-print_final_stats=1", str(corpus)],
        capture_output=True, text=True, cwd=tempfile.gettempdir(),
    )
    log = proc.stderr
    runs = next((int(line.rsplit(":", 1)[1]) for line in log.splitlines() if line.startswith("stat::number_of_executed_units")), 0)
    cov = [line for line in log.splitlines() if " cov: " in line]
    return {
        "target": name,
        "seconds": round(time.monotonic() - began, 1),
        "runs": runs,
        "ok": proc.returncode == 0,
        "coverage": cov[-1].split(" cov: ")[1].split()[0] if cov else None,
        "finding": None if proc.returncode == 0 else log[-3000:],
    }


def child(name: str, argv: list[str]) -> None:
    import atheris
    # Imported first so they are not instrumented: only our code is worth the coverage
    # feedback, and instrumenting pytest and hypothesis costs half a minute of start-up.
    import hypothesis  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401

    with atheris.instrument_imports():
        test = _target(name)
    atheris.Setup([sys.argv[0], *argv], test)
    atheris.Fuzz()


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all")
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--corpus", type=Path, help="kept between runs; default: a temporary directory")
    args = parser.parse_args()
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("atheris is not installed: pip install atheris (CPython 3.11 x86_64 has a wheel)", file=sys.stderr)
        return 2
    results = []
    for name in TARGETS if args.target == "all" else (args.target,):
        corpus = args.corpus / name if args.corpus else Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
        corpus.mkdir(parents=True, exist_ok=True)
        if name != "relay":  # relay inputs are framed datagrams, not SIP: it starts from nothing
            for seed in (*FIXTURES.glob("torture/*.sip"), *FIXTURES.glob("sip/*.sip")):
                shutil.copy(seed, corpus / seed.name)
        result = run_one(name, args.seconds, corpus)
        results.append(result)
        print(f"{name:7} {'ok' if result['ok'] else 'FINDING':8} runs={result['runs']:<9} cov={result['coverage']} "
              f"in {result['seconds']} s")
        if result["finding"]:
            print(result["finding"])
    print(json.dumps({"fuzz": results}))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
