"""Each leg its own codec, end to end: a PCMA-only SIPp trunk calls a PCMU-only baresip.

The trunk's SDP offers PCMA alone; alice's baresip has only PCMU (peers.Baresip sets
``audio_codecs=PCMU``). The B2BUA offers alice both laws, answers the trunk PCMA, and
the media core transcodes between the legs, so: the call is answered (never 488), the
trunk hears alice's tone in A-law, alice hears the trunk's tone in mu-law, and the
recording has both, one per channel (contract: channel 1 external, channel 2 user).
"""

from tests.e2e.audio import channel, has_tone, load_wav
from tests.e2e.pcap import PT_PCMA, PT_PCMU, Tone, build_stream
from tests.e2e.peers import Ports, RtpEndpoint, Sipp, alice_line

RATE = 8000


def test_pcma_only_trunk_to_pcmu_only_phone_is_answered_transcoded_and_recorded(tmp_path, b2bua, baresip):
    ports = Ports.allocate()
    pbx = b2bua(config_text=f'''
[server]
listen = "{ports.listen}"
rtp_ports = "{ports.rtp_ports}"
[organisation]
name = "Test"
{alice_line(ports.trunk)}''')
    alice = baresip("alice", "alice-secret", pbx.sip_address, tone_hz=1000)
    trunk_media = RtpEndpoint()
    try:
        sipp = Sipp("uac_call.xml", tmp_path, remote=pbx.sip_address, port=ports.trunk_port, service="441632960000",
                     media_port=trunk_media.port,
                     params={"pcap": None, "pause_ms": 4500, "audio_pt": PT_PCMA, "audio_codec": "PCMA"}).start()
        b2bua_media = sipp.remote_media(10)  # from the B2BUA's 200 OK: the call was answered
        trunk_media.send(build_stream([Tone(440, 3.5)], payload_type=PT_PCMA, ssrc=0x0A1A0A1A), remote=b2bua_media)
        sipp.wait().check()
        alice.wait_for("closed", 5)

        ok = next(m for m in sipp.received_messages() if m.startswith("SIP/2.0 200") and "m=audio" in m)
        assert "RTP/AVP 8 101" in ok and "PCMA/8000" in ok and "PCMU" not in ok  # answered from the trunk's offer
        assert "488" not in "".join(m.split("\n", 1)[0] for m in sipp.received_messages())

        # the trunk hears alice (PCMU at her end) in A-law only
        assert trunk_media.received(PT_PCMA) and not trunk_media.received(PT_PCMU)
        assert has_tone(trunk_media.audio(payload_type=PT_PCMA), RATE, 1000)
        # alice hears the trunk (PCMA at its end) through her mu-law-only phone
        assert has_tone(*channel(alice.heard_wav()), 440)
    finally:
        trunk_media.close()

    wav = pbx.wait_for_recording()
    x, rate = load_wav(wav)
    assert rate == RATE and x.shape[1] == 2
    assert has_tone(x[:, 0], rate, 440) and has_tone(x[:, 1], rate, 1000)  # channel 1 trunk, channel 2 alice
    meta = pbx.sidecar(wav)
    assert meta["direction"] == "inbound" and meta["user"] == "alice" and len(meta["segments"]) == 1
    assert "event=answered" in pbx.logs() and "recorded=yes" in pbx.logs()
