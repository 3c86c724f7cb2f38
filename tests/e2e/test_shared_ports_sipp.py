"""Shared media ports by default with peers that send every call's RTP from one address.

SIPp 3.6.1's `rtp_stream` sends all its calls' RTP from one socket, on both sides (the trunk
placing calls and the phone answering them). With `[server] media_sockets` left at its
default (shared ports), each such leg must still get its own port (rtp.mux), so every call
is relayed and recorded whole: `bench/soak.py` runs that (real SIPp on both sides, real
B2BUA) and checks every call and every WAV; here briefly, a few calls overlapping.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_sipp_rtp_stream_calls_on_shared_ports_are_relayed_and_recorded_whole() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--rate", "4", "--minutes", "0.25", "--hold", "4",
         "--after", "2", "--drain", "10", "--min-free-gb", "1", "--rss-bound", "1000"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.loads(lines[-1])
    assert result["calls"] >= 40 and result["failed"] == 0, result
    assert result["wav_ok"] and result["wavs"] == result["succeeded"], result
    assert result["audio_gap_max"] == 0.0, result  # no call lost audio to an ambiguous port
    assert run.returncode == 0, run.stdout[-2000:]
