"""First light: a trunk call through the B2BUA to a registered baresip, recorded."""

from tests.e2e.audio import channel, has_tone, load_wav
from tests.e2e.pcap import Tone, write_pcap
from tests.e2e.peers import Ports, Sipp, alice_line


def test_inbound_call_is_recorded(tmp_path, b2bua, baresip):
    ports = Ports.allocate()
    pbx = b2bua(extra_args=["--sip-trace"], config_text=f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
[organisation]
name = "Test"
{alice_line(ports.trunk)}''')
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)
    Sipp("uac_call.xml", tmp_path, remote=pbx.sip_address, port=ports.trunk_port,
         service="441632960000",
         params={"pcap": write_pcap(tmp_path / "in.pcap", [Tone(440, 3.0)]), "pause_ms": 4000},
         ).run().check()
    alice.wait_for("closed", 5)
    wav = pbx.wait_for_recording()
    x, rate = load_wav(wav)
    assert has_tone(x[:, 0], rate, 440) and has_tone(x[:, 1], rate, 1000)
    assert has_tone(*channel(alice.heard_wav()), 440)
