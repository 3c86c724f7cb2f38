"""`[cluster]`: what a good section gives each worker, what each bad value is told, and
the Kamailio configuration `b2bua edge-config` prints (checked by Kamailio itself)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from b2bua.cli import main
from b2bua.cluster import edge_config
from b2bua.cluster.topology import all_slots, worker_config
from b2bua.config import ConfigError, load_file

BASE = """
[server]
listen = "127.0.0.1:5060"
media_ip = "127.0.0.1"
rtp_ports = "20000-20999"
"""
CLUSTER = """
[cluster]
workers = 2
edge = "kamailio"
redis = "redis://127.0.0.1:6379/0"
worker_ports = "5100-5199"
"""
KAMAILIO = "/usr/sbin/kamailio"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flows.toml"
    path.write_text(text)
    return path


def test_no_cluster_section_is_one_process(tmp_path):
    assert load_file(write(tmp_path, BASE)).cluster is None


def test_each_worker_gets_its_own_sip_port_and_media_ports(tmp_path):
    config = load_file(write(tmp_path, BASE + CLUSTER))
    assert config.cluster.workers == 2 and config.cluster.hosts == ("127.0.0.1",)
    assert (config.cluster.edge_host, config.cluster.edge_port) == ("127.0.0.1", 5060)
    first, second = worker_config(config, 0).server, worker_config(config, 1).server
    assert (first.host, first.port, first.rtp_ports) == ("127.0.0.1", 5100, (20000, 20499))
    assert (second.host, second.port, second.rtp_ports) == ("127.0.0.1", 5101, (20500, 20999))
    assert first.recordings_dir == second.recordings_dir == config.server.recordings_dir


def test_odd_media_shares_stay_even(tmp_path):
    config = load_file(write(tmp_path, BASE.replace("20000-20999", "20000-20013") + CLUSTER.replace("workers = 2", "workers = 3")))
    slices = [worker_config(config, i).server.rtp_ports for i in range(3)]
    assert slices == [(20000, 20003), (20004, 20007), (20008, 20011)]  # 14 ports: 4 each, RTP on even


def test_several_hosts_are_all_in_the_dispatcher_list(tmp_path):
    text = BASE.replace('listen = "127.0.0.1:5060"', 'listen = "203.0.113.10:5060"').replace(
        'media_ip = "127.0.0.1"', 'media_ip = "10.0.0.2"') + CLUSTER + 'hosts = ["10.0.0.2", "10.0.0.3"]\nedge_address = "10.0.0.1:5060"\n'
    config = load_file(write(tmp_path, text))
    assert [(s.host, s.port) for s in all_slots(config)] == [
        ("10.0.0.2", 5100), ("10.0.0.2", 5101), ("10.0.0.3", 5100), ("10.0.0.3", 5101)]
    listing = edge_config.dispatcher_list(config)
    assert "1 sip:10.0.0.3:5101;transport=udp" in listing


@pytest.mark.parametrize("extra, key, reason", [
    ("workers = 0", "cluster.workers", "1 to 256"),
    ('workers = "two"', "cluster.workers", "expected an integer"),
    ('edge = "opensips"', "cluster.edge", '"kamailio"'),
    ('redis = "http://x"', "cluster.redis", "redis://"),
    ('redis = "redis://127.0.0.1:99999/0"', "cluster.redis", "port"),
    ('worker_ports = "5100"', "cluster.worker_ports", "range"),
    ('worker_ports = "5100-5100"', "cluster.worker_ports", "1 ports for 2 workers"),
    ('worker_ports = "5059-5099"', "cluster.worker_ports", "SIP port 5060"),
    ('worker_ports = "20990-21010"', "cluster.worker_ports", "overlaps server.rtp_ports"),
    ('hosts = ["nowhere"]', "cluster.hosts[0]", "IP address"),
    ('hosts = []', "cluster.hosts", "empty"),
    ('edge_address = "0.0.0.0:5060"', "cluster.edge_address", "wildcard"),
    ("wrkers = 2", "cluster.wrkers", "unknown key"),
])
def test_a_bad_cluster_value_names_the_file_key_and_reason(tmp_path, extra, key, reason):
    path = write(tmp_path, BASE + "[cluster]\n" + extra + "\n")  # every other key at its default
    with pytest.raises(ConfigError) as err:
        load_file(path)
    assert err.value.key == key and reason in err.value.reason and err.value.path == str(path)


def test_too_many_workers_for_the_media_ports(tmp_path):
    path = write(tmp_path, BASE.replace("20000-20999", "20000-20007") + CLUSTER.replace("workers = 2", "workers = 3"))
    with pytest.raises(ConfigError, match="cluster.workers: 3 workers leave each fewer than 4"):
        load_file(path)


def test_a_cluster_edge_listens_on_its_own_address_not_a_wildcard(tmp_path):
    path = write(tmp_path, BASE.replace("127.0.0.1:5060", "0.0.0.0:5060") + CLUSTER + 'edge_address = "10.0.0.1:5060"\n')
    with pytest.raises(ConfigError, match=r"server.listen: .*wildcard.*the edge's own"):
        load_file(path)


def test_cluster_commands_without_a_cluster_section_exit_1_naming_the_section(tmp_path, capsys):
    path = write(tmp_path, BASE)
    for argv in (["cluster", "--config", str(path)], ["edge-config", "--config", str(path)],
                 ["worker", "--config", str(path), "--index", "0"]):
        assert main(argv) == 1
        assert f"{path}: cluster: missing" in capsys.readouterr().err


def test_a_worker_index_out_of_range_is_a_usage_error(tmp_path, capsys):
    path = write(tmp_path, BASE + CLUSTER)
    assert main(["worker", "--config", str(path), "--index", "2"]) == 2
    assert "expected 0 to 1" in capsys.readouterr().err


def test_a_bad_cluster_file_exits_1_before_anything_starts(tmp_path, capsys):
    path = write(tmp_path, BASE + CLUSTER.replace('edge = "kamailio"', 'edge = "nginx"'))
    assert main(["cluster", "--config", str(path)]) == 1
    assert f"{path}: cluster.edge:" in capsys.readouterr().err


# -- the edge's configuration, as Kamailio reads it -----------------------------------


def kamailio_check(cfg: Path) -> subprocess.CompletedProcess:
    assert shutil.which(KAMAILIO) or Path(KAMAILIO).is_file(), "kamailio is installed by scripts/install.sh --test"
    return subprocess.run([KAMAILIO, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("extra", ["", 'hosts = ["127.0.0.1", "127.0.0.2"]\nedge_address = "127.0.0.1:5070"\n'],
                         ids=["one-host", "two-hosts-own-edge-socket"])
def test_kamailio_accepts_the_written_configuration(tmp_path, extra):
    config = load_file(write(tmp_path, BASE + CLUSTER + extra))
    cfg, listing = edge_config.write(config, tmp_path / "edge")
    result = kamailio_check(cfg)
    assert result.returncode == 0, result.stderr
    assert "config file ok" in result.stdout + result.stderr
    text = cfg.read_text()
    for must in ('"ds_ping_interval", 1', '"ds_probing_mode", 1', "failure_route[NEXT_WORKER]", "record_route()",
                 "loose_route()", 'ds_select_dst("1", "4")', 'remove_hf("X-B2BUA-Source")', str(listing.resolve())):
        assert must in text


def test_edge_config_prints_what_the_cluster_runs(tmp_path, capsys):
    path = write(tmp_path, BASE + CLUSTER)
    assert main(["edge-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!KAMAILIO")
    assert "# 1 sip:127.0.0.1:5100;transport=udp" in out and "# 1 sip:127.0.0.1:5101;transport=udp" in out
    # The printed text is a configuration Kamailio accepts once its list file exists.
    listing = tmp_path / "list"
    listing.write_text("".join(line[2:] + "\n" for line in out.splitlines() if line.startswith("# 1 sip:")))
    cfg = tmp_path / "printed.cfg"
    cfg.write_text(out.replace("/etc/kamailio/b2bua-dispatcher.list", str(listing)))
    result = kamailio_check(cfg)
    assert result.returncode == 0, result.stderr
