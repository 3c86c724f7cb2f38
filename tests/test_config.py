"""flows.toml: what a good file gives and what each bad file is told."""

from pathlib import Path

import pytest

from b2bua.config import PACKAGED_CONFIG, ConfigError, load_file
from b2bua.policy import Record

REPO = Path(__file__).resolve().parents[1]

GOOD = """
[server]
listen = "127.0.0.1:5070"
media_ip = "127.0.0.1"
rtp_ports = "30000-30099"
recordings_dir = "rec"
realm = "test"

[organisation]
name = "T"
call_recording = true

[[trunks]]
name = "carrier"
sources = ["127.0.0.1:5080", "203.0.113.0/24", "2001:db8::1"]
uri = "sip:127.0.0.1:5080"

[[numbers]]
ddi = "+441632960000"
record = "yes"
to = "ring_group:sales"

[[ring_groups]]
name = "sales"
members = ["alice"]

[[users]]
name = "alice"
extension = 201
password = "pw"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flows.toml"
    path.write_text(text)
    return path


def test_good_file_parses_with_defaults(tmp_path):
    config = load_file(write(tmp_path, GOOD))
    assert config.server.port == 5070
    assert config.server.recordings_dir == tmp_path / "rec"
    assert config.number("441632960000") is config.number("+441632960000")
    assert config.numbers[0].ddi == "441632960000"
    assert config.ring_groups[0].record is Record.DONT_CARE
    assert config.ring_groups[0].ring_timeout == 30
    assert config.user("alice").extension == "201"
    assert config.server.pause == "silence"
    assert config.server.feature_timeout == 2.0
    assert config.server.media_sockets == "shared"  # the default on an IPv4 media_ip (rtp.mux)
    assert config.server.media_poll == 0.002
    per_call = load_file(write(tmp_path, GOOD.replace('realm = "test"', 'realm = "test"\nmedia_sockets = "per_call"')))
    assert per_call.server.media_sockets == "per_call"
    polled = load_file(write(tmp_path, GOOD.replace('realm = "test"', 'realm = "test"\nmedia_poll_ms = 0')))
    assert polled.server.media_poll == 0.0  # read on readiness
    v6 = load_file(write(tmp_path, GOOD.replace('media_ip = "127.0.0.1"', 'media_ip = "::1"')))
    assert v6.server.media_sockets == "per_call"  # shared ports are IPv4 only
    assert config.server.max_calls == 0  # no fixed limit: the learned ceiling alone (rtp.admission)
    capped = load_file(write(tmp_path, GOOD.replace('realm = "test"', 'realm = "test"\nmax_calls = 400')))
    assert capped.server.max_calls == 400


def test_media_codecs_default_to_both_laws_and_follow_the_file(tmp_path):
    assert load_file(write(tmp_path, GOOD)).media.codecs == ("PCMU", "PCMA")
    alaw_first = GOOD.replace("[organisation]", '[media]\ncodecs = ["pcma", "PCMU"]\n[organisation]')
    assert load_file(write(tmp_path, alaw_first)).media.codecs == ("PCMA", "PCMU")


def test_trunk_sources_match_ip_port_cidr(tmp_path):
    trunk = load_file(write(tmp_path, GOOD)).trunks[0]
    assert trunk.matches("127.0.0.1", 5080)
    assert not trunk.matches("127.0.0.1", 5081)
    assert trunk.matches("203.0.113.77", 40000)
    assert trunk.matches("2001:db8::1", 5060)
    assert not trunk.matches("198.51.100.1", 5080)
    assert not trunk.matches("not-an-ip", 5080)


@pytest.mark.parametrize(
    "change, key, words",
    [
        (('to = "ring_group:sales"', 'to = "ring_group:support"'), "numbers[0].to", "no [[ring_groups]]"),
        (('members = ["alice"]', 'members = ["alice", "zed"]'), "ring_groups[0].members[1]", "in no [[users]]"),
        (('"203.0.113.0/24"', '"203.0.113.0/33"'), "trunks[0].sources[1]", "CIDR"),
        (('rtp_ports = "30000-30099"', 'rtp_ports = "5000-5100"'), "server.rtp_ports", "overlaps the SIP port"),
        (('rtp_ports = "30000-30099"', 'rtp_ports = "30000"'), "server.rtp_ports", "range"),
        (('record = "yes"', 'record = "maybe"'), "numbers[0].record", "dont_care"),
        (('realm = "test"', 'realm = "test"\nlisten_port = 1'), "server.listen_port", "unknown key"),
        (('call_recording = true', 'call_recording = "yes"'), "organisation.call_recording", "true or false"),
        (('uri = "sip:127.0.0.1:5080"', 'uri = "127.0.0.1:5080"'), "trunks[0].uri", "SIP URI"),
        (('listen = "127.0.0.1:5070"', 'listen = "localhost:5070"'), "server.listen", "IP address"),
        (('password = "pw"', 'password = ""'), "users[0].password", "empty"),
        (('realm = "test"', 'realm = "test"\nmedia_sockets = "pooled"'), "server.media_sockets", '"per_call" or "shared"'),
        (('realm = "test"', 'realm = "test"\nmax_calls = -1'), "server.max_calls", ">= 0"),
        (('realm = "test"', 'realm = "test"\nmax_calls = "many"'), "server.max_calls", "integer"),
        (('realm = "test"', 'realm = "test"\nmax_calls = true'), "server.max_calls", "integer"),
        (('media_ip = "127.0.0.1"', 'media_ip = "::1"\nmedia_sockets = "shared"'), "server.media_sockets", "IPv4"),
        (('realm = "test"', 'realm = "test"\nmedia_poll_ms = 50'), "server.media_poll_ms", "0 to 20"),
        (('realm = "test"', 'realm = "test"\nmedia_poll_ms = "fast"'), "server.media_poll_ms", ""),
        (('[organisation]', '[media]\ncodecs = ["G722", "PCMU"]\n[organisation]'), "media.codecs[0]", "G.722 is planned"),
        (('[organisation]', '[media]\ncodecs = ["PCMU", "GSM"]\n[organisation]'), "media.codecs[1]", "PCMU, PCMA"),
        (('[organisation]', '[media]\ncodecs = ["PCMA", "pcma"]\n[organisation]'), "media.codecs[1]", "twice"),
        (('[organisation]', '[media]\ncodecs = []\n[organisation]'), "media.codecs", "empty"),
        (('[organisation]', '[media]\ncodecs = "PCMU"\n[organisation]'), "media.codecs", "a list"),
    ],
)
def test_bad_file_names_key_and_reason(tmp_path, change, key, words):
    old, new = change
    assert old in GOOD
    with pytest.raises(ConfigError) as err:
        load_file(write(tmp_path, GOOD.replace(old, new)))
    assert err.value.key == key
    assert words in err.value.reason
    assert str(tmp_path / "flows.toml") in str(err.value)


def test_duplicate_ddi(tmp_path):
    text = GOOD + '\n[[numbers]]\nddi = "441632960000"\nto = "user:alice"\n'
    with pytest.raises(ConfigError) as err:
        load_file(write(tmp_path, text))
    assert err.value.key == "numbers[1].ddi" and "twice" in err.value.reason


def test_duplicate_extension(tmp_path):
    text = GOOD + '\n[[users]]\nname = "bob"\nextension = "201"\npassword = "x"\n'
    with pytest.raises(ConfigError) as err:
        load_file(write(tmp_path, text))
    assert err.value.key == "users[1].extension"


def test_not_toml(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_file(write(tmp_path, "[server\n"))
    assert err.value.key == "(syntax)"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_file(tmp_path / "nope.toml")
    assert "cannot read" in err.value.reason


def test_shipped_demo_is_valid_and_same_as_repo_copy():
    assert PACKAGED_CONFIG.read_text() == (REPO / "flows.toml").read_text()
    config = load_file(REPO / "flows.toml")
    assert config.users and config.numbers and config.trunks
