"""Issue 18 end to end: what `b2bua run` does at start with `[recordings] retention_days`
and with an `[http] listen` address it cannot have."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

import socket

from tests.e2e.peers import B2buaProcess, Ports

pytestmark = pytest.mark.e2e


def seed(root, day: datetime, call_id: str, size: int) -> None:
    folder = root / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{call_id}.wav").write_bytes(bytes(size))
    started = day.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    (folder / f"{call_id}.json").write_text(json.dumps({"call_id": call_id, "started": started, "ended": started}))


@pytest.mark.parametrize("days", [7, 0])
def test_retention_runs_at_start_and_logs_count_and_bytes(tmp_path, days):
    ports = Ports.allocate()
    root = tmp_path / "recordings"
    now = datetime.now(UTC)
    seed(root, now - timedelta(days=30), "old-call", 1000)
    seed(root, now - timedelta(days=1), "recent-call", 500)
    pbx = B2buaProcess(f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
[recordings]
retention_days = {days}
''', tmp_path).start()
    try:
        if days:
            line = pbx.wait_for_log(r"retention event=run retention_days=7 deleted=(\d+) bytes=(\d+)")
            assert line.group(1) == "1" and int(line.group(2)) >= 1000
            assert not list(root.rglob("old-call.*"))
        else:
            assert "retention event=" not in pbx.logs()  # 0 keeps them: no run at all
            assert list(root.rglob("old-call.*"))
        assert len(list(root.rglob("recent-call.*"))) == 2
    finally:
        pbx.stop()


def test_an_http_address_in_use_exits_1_with_the_reason(tmp_path):
    ports = Ports.allocate()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        pbx = B2buaProcess(f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
[http]
listen = "127.0.0.1:{taken.getsockname()[1]}"
''', tmp_path)
        with pytest.raises(RuntimeError, match="exited with 1"):
            pbx.start()
        assert "startup event=failed" in pbx.logs() and "address already in use" in pbx.logs().lower()
        assert "Traceback" not in pbx.logs()
    finally:
        taken.close()
