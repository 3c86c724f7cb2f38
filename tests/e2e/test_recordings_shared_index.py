"""Issue 18 end to end: with `[cluster] redis`, the recordings index lives in Redis, so two
B2BUA processes sharing it (and, as workers on one host do, one recordings_dir) each list
and serve the other's recordings."""

from __future__ import annotations

import json

import pytest

from tests.e2e.peers import Baresip
from tests.e2e.recordings_setup import start_pbx, wait_indexed
from tests.private_redis import private_redis

pytestmark = pytest.mark.e2e


def test_two_processes_share_one_index_in_redis(tmp_path):
    shared_dir = tmp_path / "shared-recordings"
    with private_redis(tmp_path) as url:
        extra = f'recordings_dir = "{shared_dir}"'
        tail = f'\n[cluster]\nredis = "{url}"\n'
        one = start_pbx(tmp_path, server_extra=extra, tail=tail, name="one")
        two = start_pbx(tmp_path, server_extra=extra, tail=tail, name="two")
        phones = []
        try:
            for pbx in (one, two):
                alice = Baresip("alice", "alice-secret", pbx.proc.sip_address, tmp_path, tone_hz=1000,
                                name=f"alice-{pbx.proc.name}").start()
                phones.append(alice)
                pbx.sipp_call(2.0)
                alice.wait_for("closed", 5)
            from_one = wait_indexed(one, 2)
            from_two = wait_indexed(two, 2)
            assert [r["call_id"] for r in from_one] == [r["call_id"] for r in from_two]
            assert len({r["call_id"] for r in from_one}) == 2
            on_disk = {p.stem for p in shared_dir.rglob("*.wav")}
            assert on_disk == {r["call_id"] for r in from_one}
            # Each process serves the WAV the other recorded.
            for pbx, rec in ((one, from_one[0]), (two, from_one[1])):
                status, _, body = pbx.http(f"/api/recordings/{rec['call_id']}.wav")
                assert status == 200 and body[:4] == b"RIFF"
            assert json.loads(one.http(f"/api/recordings/{from_two[0]['call_id']}")[2]) == from_two[0]
            assert not list(tmp_path.glob("*index.sqlite3"))  # Redis, not SQLite
        finally:
            for phone in phones:
                phone.stop()
            for pbx in (one, two):
                pbx.proc.stop()
                pbx.trunk.close()
                print(f"--- {pbx.proc.name} log ---\n{pbx.proc.logs()[-10000:]}")
