"""Issue 16: `[security]` keys that would switch protection off are refused, naming the key
(`b2bua check`/`run` exit 1). Before, negative lockout_seconds and failure_window loaded."""

from __future__ import annotations

import pytest

from b2bua.config import ConfigError, load_file
from tests.test_cli import b2bua
from tests.test_config import GOOD


def with_security(tmp_path, body: str):
    path = tmp_path / "flows.toml"
    path.write_text(GOOD + "\n[security]\n" + body + "\n")
    return path


@pytest.mark.parametrize(
    "line, key",
    [
        ("lockout_seconds = -1", "security.lockout_seconds"),
        ("failure_window = -60", "security.failure_window"),
        ("failure_window = 0", "security.failure_window"),
        ("max_lockout_seconds = -5", "security.max_lockout_seconds"),
        ("max_lockout_seconds = 10", "security.max_lockout_seconds"),  # shorter than lockout_seconds
        ("max_auth_failures_per_hour = 0", "security.max_auth_failures_per_hour"),
        ("max_auth_failures_per_day = -1", "security.max_auth_failures_per_day"),
        ("max_user_failures_per_hour = 0", "security.max_user_failures_per_hour"),
        ("stranger_answers_per_second = 0", "security.stranger_answers_per_second"),
        ('answer_strangers = "no"', "security.answer_strangers"),
    ],
)
def test_bad_security_values_name_their_key(tmp_path, line, key) -> None:
    with pytest.raises(ConfigError) as err:
        load_file(with_security(tmp_path, line))
    assert key in str(err.value)


def test_new_security_keys_load(tmp_path) -> None:
    sec = load_file(with_security(tmp_path, "max_auth_failures_per_hour = 10\nmax_auth_failures_per_day = 30\n"
                                  "max_lockout_seconds = 3600\nmax_user_failures_per_hour = 40\n"
                                  "answer_strangers = false\nstranger_answers_per_second = 2.5")).security
    assert (sec.max_failures_per_hour, sec.max_failures_per_day, sec.max_lockout_seconds) == (10, 30, 3600.0)
    assert (sec.max_user_failures_per_hour, sec.answer_strangers, sec.stranger_answers_per_second) == (40, False, 2.5)


def test_check_exits_1_naming_a_negative_lockout(tmp_path) -> None:
    with_security(tmp_path, "lockout_seconds = -600")
    out = b2bua("check", cwd=tmp_path)
    assert out.returncode == 1 and "security.lockout_seconds" in out.stderr, out.stderr
