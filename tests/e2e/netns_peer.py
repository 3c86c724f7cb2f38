"""The phone and the trunk of the two-namespace test, run INSIDE the edge's namespace.

`ip netns exec <edge-ns> python -m tests.e2e.netns_peer EDGE_IP EDGE_PORT TRUNK_PORT DIR`:
alice (baresip) registers at the edge, the trunk calls the DDI through the edge, sends
a 440 Hz tone for 2 s and hangs up. Prints one JSON line with what happened. The peers'
helpers bind 127.0.0.1 by default; here every address is the namespace's own (LOCALHOST
is replaced before anything is created), so media reaches the worker's namespace.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tests.e2e import peers


def main() -> int:
    edge_ip, edge_port, trunk_port, directory = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    peers.LOCALHOST = edge_ip
    edge = f"{edge_ip}:{edge_port}"
    result: dict = {}
    alice = peers.Baresip("alice", "alice-secret", edge, directory, tone_hz=1000)
    trunk = peers.PyTrunk(trunk_port)
    try:
        alice.start()
        result["registered"] = alice.is_registered()
        call = trunk.call(edge, "441632960000")
        result["status"] = call.wait_answered(15)
        result["remote_media"] = list(call.remote_media or ())
        call.rtp.send_tone(440, 2.0, remote=call.remote_media)
        time.sleep(2.2)
        result["heard_packets"] = len(call.rtp.received())
        result["bye"] = call.bye()
        alice.wait_for("closed", 5)
        result["alice_closed"] = True
    except Exception as exc:  # reported to the test, which prints the logs
        result["error"] = repr(exc)
        result["alice_log"] = alice.logs()[-3000:]
    finally:
        trunk.close()
        alice.stop()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
