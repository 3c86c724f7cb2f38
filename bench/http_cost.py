"""What the recordings page, API and /metrics cost the B2BUA's one core, without calls.

    python bench/http_cost.py                        # 20 requests/s for 20 s, 1,000 recordings indexed
    python bench/http_cost.py --rate 100 --seconds 30

Starts `b2bua run` with `[http]` and 1,000 earlier recordings, idles `--seconds` to measure
its baseline CPU, then polls at `--rate` requests/s in turn: a page of 50 recordings,
/metrics, the page itself and 64 KiB of a WAV (Range), as bench/load.py --http-poll does.
Prints the B2BUA's CPU (% of one core) idle and polled, the CPU per request and the request
latency. CPU seconds of the process are what it used, so the figure holds up on a shared
machine better than a loss figure does (the latency does not). Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import load  # noqa: E402  (bench/load.py: the same seeding and poller)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="http-cost-") as tmp:
        workdir = Path(tmp)
        recordings = workdir / "recordings"
        load.seed_recordings(recordings)
        sip_port, http_port = load.free_port(), load.free_port(load.socket.SOCK_STREAM)
        config = workdir / "flows.toml"
        config.write_text(load.b2bua_config(1, sip_port, load.free_port(), (30000, 30099), False, recordings,
                                            http_port=http_port))
        log = open(workdir / "b2bua.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "b2bua", "run", "--config", str(config)], stdout=log, stderr=log)
        try:
            load.wait_listening(sip_port, proc)
            time.sleep(1.0)
            cpu0, t0 = load.cpu_seconds(proc.pid), time.monotonic()
            time.sleep(args.seconds)
            idle = (load.cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
            stop, (out, into) = multiprocessing.Event(), multiprocessing.Pipe(duplex=False)
            poller = multiprocessing.Process(target=load.http_poller, args=(http_port, args.rate, stop, into))
            cpu0, t0 = load.cpu_seconds(proc.pid), time.monotonic()
            poller.start()
            time.sleep(args.seconds)
            stop.set()
            requests, errors, median_ms, p95_ms = out.recv()
            poller.join()
            wall = time.monotonic() - t0
            polled = (load.cpu_seconds(proc.pid) - cpu0) / wall
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            log.close()
    per_request_ms = 1000 * (polled - idle) * wall / requests if requests else 0.0
    print(f"idle cpu={100 * idle:.2f}% polled at {args.rate:g}/s cpu={100 * polled:.2f}% "
          f"-> {per_request_ms:.2f} ms CPU per request; {requests} requests, {errors} errors, "
          f"latency median {median_ms:.2f} ms p95 {p95_ms:.2f} ms")
    print(json.dumps({"rate": args.rate, "idle_cpu_percent": round(100 * idle, 2),
                      "polled_cpu_percent": round(100 * polled, 2), "cpu_ms_per_request": round(per_request_ms, 3),
                      "requests": requests, "errors": errors, "median_ms": round(median_ms, 2),
                      "p95_ms": round(p95_ms, 2), "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
