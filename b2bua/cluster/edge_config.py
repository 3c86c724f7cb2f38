"""`b2bua edge-config`: the Kamailio configuration of a cluster's edge, from flows.toml.

Two files: `kamailio.cfg` (the routing logic below) and `dispatcher.list` (one line per
worker). `b2bua cluster` writes both into a private run directory and starts Kamailio on
them; an operator who runs Kamailio elsewhere gets the same text from `b2bua edge-config`.

Choices, with the dispatcher module's README (kamailio/src/modules/dispatcher) at hand:
- Selection: algorithm 4, round robin over the workers the probe finds alive. Every call
  is a new Call-ID, so round robin spreads calls evenly; load-based (algorithm 10) needs
  the dialog module to count calls and would add a state table at the edge for little.
- Liveness: every worker is sent OPTIONS every second (ds_ping_interval=1,
  ds_probing_mode=1); one missed or non-2xx answer (ds_probing_threshold=1, the probe's
  own timeout 1.5 s) takes it out of the set, one 200 puts it back (ds_inactive_threshold=1).
  A dead worker is out within about 2.5 s, a draining one (it answers 503) within 1 s.
- Failover: an INVITE or REGISTER a worker does not answer within 1.5 s (fr_timer), or
  answers 503 (full, draining), goes to the next worker (failure_route, ds_next_dst);
  a silent worker is also marked down at once (ds_mark_dst). Each copy sent to a worker
  carries the time it was sent (X-B2BUA-Sent, set per branch in branch_route), so a
  worker that reads a new INVITE after the edge has moved on refuses it (503) instead of
  ringing the phone a second time (b2bua.cluster.worker).
- In-dialog requests to a worker (ACK, BYE, re-INVITE) have nowhere else to go, so they
  get RFC 3261's timers (32 s for a BYE's answer), not the 1.5 s of failover: a worker
  a few seconds behind still ends the call normally instead of the edge answering 408.
- Dialogs: record_route() puts the edge in every dialog, so ACK, BYE and re-INVITE come
  back here and follow the Route/Request-URI (loose_route, RFC 3261 §16.12) to the worker
  that holds the call (its Contact). From outside, a request is only ever passed to a
  worker of the set: the edge is not an open relay.
- Trust: the edge deletes any X-B2BUA-Source/X-B2BUA-Dst a sender wrote and adds
  X-B2BUA-Source with the request's real source; workers believe it only from the edge's
  own socket (b2bua.cluster.edge_link). Workers name the destination of their own
  requests in X-B2BUA-Dst, believed only from a worker of the dispatcher list.
- In-dialog requests from a worker follow the dialog's route (this edge's Record-Route)
  to the Request-URI; the edge marks every Contact it passes from a phone or trunk with
  the address it really came from (nathelper's set_contact_alias, replacing any alias
  the sender wrote) and handle_ruri_alias() sends the request there: NAT and TCP
  phones are reached in dialogs exactly as for new requests.
- REGISTER: phones register at the edge, which passes REGISTER to a worker like any
  request, with the phone's real source. The worker stores the binding (user -> that
  source, as `b2bua run` does) in the shared store, and any worker reaches the phone by
  sending to the edge with X-B2BUA-Dst = that source: the edge holds the NAT binding or
  TCP connection. We chose this over Path (RFC 3327) because it keeps one binding model
  for one process and for a cluster (the registrar, the 403-to-strangers rule and lockouts
  are unchanged), and it needs no Route juggling in the workers.
"""

from __future__ import annotations

import glob
from pathlib import Path

from b2bua.cluster.edge_link import DEST_HEADER, SENT_HEADER, SOURCE_HEADER
from b2bua.cluster.topology import all_slots, cluster_of
from b2bua.config import Config

#: The dispatcher set every worker is in.
WORKER_SET = 1
#: Where Debian (and most distributions) install Kamailio's modules.
MODULE_DIRS = ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules",
               "/usr/local/lib64/kamailio/modules", "/usr/local/lib/kamailio/modules")
#: Milliseconds a worker has to answer (100 Trying) before the next one is tried; also
#: the probe's timeout, so a dead worker is out of the set within interval + this.
WORKER_ANSWER_MS = 1500
#: Phones and trunks: 32 s for a final answer to a non-INVITE (timer F = 64*T1), and
#: 120 s of ringing after a provisional answer to an INVITE.
FAR_ANSWER_MS = 32000
FAR_INVITE_MS = 120000


def module_dir() -> str:
    for candidate in (*MODULE_DIRS, *sorted(glob.glob("/usr/lib/*/kamailio/modules"))):
        if Path(candidate, "dispatcher.so").is_file():
            return candidate
    return MODULE_DIRS[0]


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dispatcher_list(config: Config) -> str:
    """One line per worker: `set uri flags priority attrs` (dispatcher README §1.4)."""
    lines = ["# set  destination  flags  priority  attributes  (written by b2bua edge-config)"]
    for slot in all_slots(config):
        uri = f"sip:{_hostport(slot.host, slot.port)};transport=udp"
        lines.append(f"{WORKER_SET} {uri} 0 0 duid=w{slot.index}@{slot.host}")
    return "\n".join(lines) + "\n"


def render(config: Config, list_path: Path | str) -> str:
    """kamailio.cfg for this flows.toml, reading the workers from `list_path`."""
    cluster = cluster_of(config)
    server = config.server
    public = _hostport(server.host, server.port)
    edge = _hostport(cluster.edge_host, cluster.edge_port)
    listens = [f"listen=udp:{public}", f"listen=tcp:{public}"]
    if edge != public:
        listens.append(f"listen=udp:{edge}")
    listen_text = "\n".join(listens)
    return f"""#!KAMAILIO
#
# The SIP edge of a b2bua cluster, written by `b2bua edge-config` from
#   {config.path}
# Regenerate it when flows.toml changes rather than editing it. Phones and trunks talk to
# {public}; {cluster.workers} worker(s) per host behind it, listed in
#   {list_path}
# Workers reach the edge at {edge} and trust X-B2BUA-Source only from there.

####### Global parameters #########
debug=1                 # notices and worse; the workers log the calls
log_stderror=yes
memdbg=5
memlog=5
children=4              # UDP receivers per socket
maxbuffer=8388608       # UDP receive buffer probed up to 8 MB (net.core.rmem_max caps it): the default
                        # ~208 KB dropped 45 of 500 BYEs a trunk sent at once (bench/cluster_load.py)
tcp_children=2
auto_aliases=no
dns=no
rev_dns=no
{listen_text}

mpath="{module_dir()}"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "sanity.so"
loadmodule "xlog.so"
loadmodule "dispatcher.so"
loadmodule "nathelper.so"

####### Module parameters #########
# A worker, and the probe of one, has {WORKER_ANSWER_MS} ms to answer (Kamailio 5.6's probes use this
# global timer); requests to phones and trunks get RFC 3261's 32 s instead (t_set_fr, FROM_WORKER).
modparam("tm", "fr_timer", {WORKER_ANSWER_MS})
modparam("tm", "fr_inv_timer", 120000)
modparam("rr", "enable_full_lr", 1)     # ;lr=on: some phones drop a bare ;lr
modparam("rr", "append_fromtag", 0)

modparam("dispatcher", "list_file", "{list_path}")
modparam("dispatcher", "flags", 2)                    # keep the other workers for ds_next_dst
modparam("dispatcher", "ds_ping_method", "OPTIONS")
modparam("dispatcher", "ds_ping_from", "sip:edge@{public}")
modparam("dispatcher", "ds_ping_interval", 1)         # probe every second ...
modparam("dispatcher", "ds_probing_mode", 1)          # ... every worker, not only failed ones
modparam("dispatcher", "ds_probing_threshold", 1)     # one failure: out of the set
modparam("dispatcher", "ds_inactive_threshold", 1)    # one 200: back in
modparam("dispatcher", "ds_ping_reply_codes", "class=2")  # a draining worker's 503 is a failure
modparam("dispatcher", "ds_default_socket", "udp:{edge}")  # workers see the edge at {edge}

####### Routing logic #########
request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (!sanity_check()) {{
        exit;   # sanity has answered what it could
    }}
    # A worker of the set (exact address, port and protocol) asking us to reach a phone or trunk.
    if (ds_is_from_list("{WORKER_SET}", "0")) {{
        route(FROM_WORKER);
        exit;
    }}
    route(FROM_OUTSIDE);
}}

# Phones and trunks: everything goes to a worker, with where it came from.
route[FROM_OUTSIDE] {{
    force_rport();      # answer NATed senders at their source port (RFC 3581)
    remove_hf("{SOURCE_HEADER}");   # only this edge says where a request came from, and when it sent it
    remove_hf("{DEST_HEADER}");
    remove_hf("{SENT_HEADER}");
    append_hf("{SOURCE_HEADER}: $pr $si $sp\\r\\n");
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();  # to the worker that has the INVITE
        }}
        exit;
    }}
    if (is_method("INVITE|SUBSCRIBE|REFER|UPDATE") && is_present_hf("Contact")) {{
        set_contact_alias("1");  # workers' in-dialog requests come back to this very address
    }}
    if (has_totag()) {{
        # In a dialog: back to the worker that holds it (our Record-Route, then its Contact).
        loose_route();
        if ($du == $null) {{
            $var(next) = $ru;
        }} else {{
            $var(next) = $du;
        }}
        if (!ds_is_from_list("{WORKER_SET}", "2", "$var(next)")) {{
            if (!is_method("ACK")) {{
                sl_send_reply("404", "Not Here");
            }}
            exit;       # never relay for outsiders to anywhere but a worker
        }}
        # The worker that holds the dialog is the only one that can answer: RFC 3261's
        # timers (timer F, 32 s), not the failover's 1.5 s, or a worker a moment behind
        # would see its BYE answered 408 by us and the caller's call fail.
        t_set_fr({FAR_INVITE_MS}, {FAR_ANSWER_MS});
        t_relay();
        exit;
    }}
    if (is_method("ACK")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    t_check_trans();    # a retransmission: tm answers it from the transaction
    if (is_method("INVITE|SUBSCRIBE|REFER")) {{
        record_route(); # in-dialog requests come back through the edge
    }}
    if (!ds_select_dst("{WORKER_SET}", "4")) {{
        xlog("L_WARN", "edge event=no-worker method=$rm source=$si:$sp\\n");
        sl_send_reply("503", "No Worker Available");
        exit;
    }}
    route(TO_WORKER);
}}

route[TO_WORKER] {{
    t_on_failure("NEXT_WORKER");
    t_on_branch("STAMP");
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}

# Each copy sent to a worker (the first, and each retry at the next) says when it left.
branch_route[STAMP] {{
    append_hf("{SENT_HEADER}: $TV(Sn)\\r\\n");
}}

# A worker did not answer in time, or is full or draining (503): try the next one.
failure_route[NEXT_WORKER] {{
    if (t_is_canceled()) {{
        exit;
    }}
    if (t_branch_timeout() && !t_branch_replied()) {{
        xlog("L_WARN", "edge event=worker-silent worker=$du method=$rm\\n");
        ds_mark_dst("ip");  # out of the set until it answers a probe
    }} else if (!t_check_status("503")) {{
        exit;               # a real answer (486, 404, 403, ...) goes back to the caller
    }}
    if (ds_next_dst()) {{
        route(TO_WORKER);
        exit;
    }}
    if (t_check_status("503")) {{
        # Every worker refused the call as overloaded (rtp.admission). A proxy relays a 503
        # as 500 (RFC 3261 §16.7 step 6), which tells a trunk nothing; the workers are the
        # service here, so the trunk hears that it is full and when to try again.
        append_to_reply("Retry-After: 10\r\n");
        t_reply("503", "Service Unavailable (overloaded)");
    }}
}}

# A worker's own request. A new one names its phone or trunk in X-B2BUA-Dst (the address
# that phone or trunk sends from); one in a dialog follows the dialog's route through this
# edge to the Request-URI, whose ;alias (set_contact_alias in FROM_OUTSIDE and onreply_route)
# is that address.
route[FROM_WORKER] {{
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();  # to where the INVITE went
        }}
        exit;
    }}
    if (has_totag()) {{
        loose_route();  # drop our own Record-Route entry
        if ($du == $null && !is_present_hf("{DEST_HEADER}")) {{
            handle_ruri_alias();
        }}
    }} else if (is_method("ACK")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }} else {{
        t_check_trans();
        if (!is_present_hf("{DEST_HEADER}")) {{
            sl_send_reply("400", "{DEST_HEADER} Missing");
            exit;
        }}
    }}
    t_set_fr({FAR_INVITE_MS}, {FAR_ANSWER_MS});  # a phone may take its time (timer F, RFC 3261 §17.1.2.2)
    if (is_present_hf("{DEST_HEADER}")) {{
        $du = $hdr({DEST_HEADER});
    }}
    remove_hf("{DEST_HEADER}");
    remove_hf("{SOURCE_HEADER}");
    if (!has_totag() && is_method("INVITE|SUBSCRIBE|REFER")) {{
        record_route(); # the phone's BYE comes back here, then to this worker
    }}
    if (!t_relay()) {{
        sl_reply_error();
    }}
    exit;
}}

# Replies from phones and trunks: their Contact gets the address they answered from, so a
# worker's later in-dialog request reaches them through their NAT binding or connection.
onreply_route {{
    if (is_present_hf("Contact") && !ds_is_from_list("{WORKER_SET}", "0")) {{
        set_contact_alias("1");
    }}
}}
"""


def write(config: Config, directory: Path) -> tuple[Path, Path]:
    """Write kamailio.cfg and dispatcher.list into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    list_path = directory / "dispatcher.list"
    cfg_path = directory / "kamailio.cfg"
    list_path.write_text(dispatcher_list(config), encoding="utf-8")
    cfg_path.write_text(render(config, list_path.resolve()), encoding="utf-8")
    return cfg_path, list_path


def printable(config: Config, list_path: str = "/etc/kamailio/b2bua-dispatcher.list") -> str:
    """What `b2bua edge-config` prints: the cfg, then the list file it names, as comments."""
    listing = "".join(f"# {line}\n" for line in dispatcher_list(config).splitlines())
    return (render(config, list_path)
            + f"\n# ---- {list_path} (write these lines, without '# ', to that file) ----\n" + listing)
