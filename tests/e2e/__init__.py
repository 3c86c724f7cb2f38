"""End-to-end tests against real SIP peers (SIPp, baresip, pyVoIP) and the B2BUA as a process.

The harness, in brief (docstrings have the details):

``peers`` (processes and endpoints, all on 127.0.0.1 with random ports)
    ``Ports.allocate()``        B2BUA SIP port, trunk SIP port, RTP range, as TOML-ready strings
    ``B2buaProcess(toml, tmp)`` ``python -m b2bua run --config``; ready when it answers OPTIONS;
                                ``logs()``, ``stop()``, ``kill9()``, ``wait_for_recording()``
    ``Baresip(user, pw, registrar, tmp, tone_hz=..)``  registered softphone driven over ctrl_tcp:
                                ``dial``, ``accept``, ``hangup``, ``send_dtmf``, ``wait_for(event)``,
                                ``received_digits()``, ``heard_wav()``
    ``Sipp(scenario, tmp, remote=.., port=.., service=.., media_port=.., params={..})``
                                ``run().check()``; UAS: ``start()`` ... ``wait().check()``
    ``RtpEndpoint()``           records RTP (``audio()``, ``digits()``), sends tone/digit trains
    ``PyTrunk()``               a tolerant Python SIP trunk with an RtpEndpoint per call
    ``PyVoipPhone(user, pw, server, tone_hz=..)``  pyVoIP phone: registers, auto-answers after 1 s
``pcap``     ``write_pcap(path, [Tone(440, 3)], [Digit("*", 1.0)])`` for SIPp's play_pcap_audio;
             ``build_stream`` for RtpEndpoint
``audio``    ``load_wav``, ``channel``, ``has_tone``, ``dominant_frequencies``, ``segments``,
             ``is_silence``, ``describe`` (for assertion messages)
``scenarios/``  uac_call, uac_call_wait_bye, uac_call_cancel, uac_expect_status, uas_answer,
             uas_answer_hangup, uas_busy (+ harness_* used only by test_harness.py)

Fixtures (conftest): ``b2bua(config_text)``, ``baresip(user, password, registrar, **kw)``,
``rtp()``; every test here is marked ``e2e``.  ``test_harness.py`` proves the harness
against the real peers without the B2BUA.
"""
