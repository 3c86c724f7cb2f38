"""`b2bua check`: the route table, its JSON and the exit codes."""

import json
import subprocess
import sys
from pathlib import Path

from tests.test_config import GOOD


def b2bua(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "b2bua", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_check_json_lists_every_route(tmp_path):
    text = GOOD.replace('members = ["alice"]', 'members = ["alice", "bob"]') + (
        '\n[[users]]\nname = "bob"\npassword = "b"\nrecord_inbound = "no"\nrecord_outbound = "yes"\n'
    )
    (tmp_path / "flows.toml").write_text(text)
    out = b2bua("check", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"route": ["number:441632960000", "ring_group:sales", "user:alice"], "recorded": True},
        {"route": ["number:441632960000", "ring_group:sales", "user:bob"], "recorded": False},
        {"route": ["user:alice", "outbound"], "recorded": False},
        {"route": ["user:bob", "outbound"], "recorded": True},
    ]


def test_check_with_recording_switched_off(tmp_path):
    (tmp_path / "f.toml").write_text(GOOD.replace("call_recording = true", "call_recording = false"))
    out = b2bua("check", "--config", "f.toml", "--json", cwd=tmp_path)
    assert [r["recorded"] for r in json.loads(out.stdout)] == [False, False]


def test_check_table_explains(tmp_path):
    (tmp_path / "flows.toml").write_text(GOOD)
    out = b2bua("check", cwd=tmp_path)
    assert out.returncode == 0
    assert "number:441632960000 → ring_group:sales → user:alice" in out.stdout
    assert "number:441632960000 = yes" in out.stdout


def test_bad_config_exits_1_naming_file_and_key(tmp_path):
    (tmp_path / "flows.toml").write_text(GOOD.replace('to = "ring_group:sales"', 'to = "user:nobody"'))
    out = b2bua("check", cwd=tmp_path)
    assert out.returncode == 1
    assert "flows.toml" in out.stderr and "numbers[0].to" in out.stderr


def test_bad_config_never_starts_server(tmp_path):
    (tmp_path / "flows.toml").write_text("[server]\nlisten = 5\n")
    out = b2bua("run", cwd=tmp_path)
    assert out.returncode == 1 and "server.listen" in out.stderr


def test_usage_error_exits_2(tmp_path):
    assert b2bua("frobnicate", cwd=tmp_path).returncode == 2
    assert b2bua(cwd=tmp_path).returncode == 2
    assert b2bua("check", "--bogus", cwd=tmp_path).returncode == 2


def test_without_file_uses_shipped_demo(tmp_path):
    out = b2bua("check", "--json", cwd=tmp_path)
    assert out.returncode == 0
    assert any(r["route"][-1] == "outbound" for r in json.loads(out.stdout))
