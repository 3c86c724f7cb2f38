"""Routing: who may call, and where a new call goes (flows.toml's numbers, ring groups,
users and trunks).

Pure decisions: `route_invite` reads the configuration and the registrar and returns
either a `Route` (the call's direction, parties and every contact to ring) or a
`Refusal` (the status to answer, or the registrar's prepared challenge). It sends
nothing and keeps no state, so every rule is a unit test on a request.

The toll-fraud rules live here: a trunk is recognised by the packet's source only; any
other INVITE must come from a registered phone's address (else 403) and carry digest
credentials (RFC 3261 §22.3: 407) whose user is the From user (else 403).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from b2bua import flows
from rtp.call import Party
from b2bua.config import Config, Number, Trunk, User
from b2bua.headers import parse_name_addr, parse_uri
from b2bua.message import Request, Response
from b2bua.peer import Peer

#: Ring time of a number routed straight to a user, and of a call between users: a ring
#: group's own `ring_timeout` default, so every call rings as long unless configured.
DEFAULT_RING_TIMEOUT = 30.0

log = logging.getLogger("b2bua")


@dataclass(frozen=True)
class Target:
    """One contact to ring: the Request-URI, where to send, who answers there."""

    uri: str
    peer: Peer
    user: User | None  # None: the trunk
    to_header: str


@dataclass(frozen=True)
class Refusal:
    """The answer to an INVITE we do not route: a status, or a prepared response
    (the registrar's 407 challenge or its lockout 403)."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    response: Response | None = None


@dataclass
class Route:
    """Where a call goes: its direction, parties, and every contact to ring at once."""

    direction: str  # "inbound" | "outbound" | "internal"
    a_channel: int  # the caller's recording channel (contract: channel 1 = index 0 is external/caller)
    parties: tuple[Party, Party]
    targets: list[Target]
    ring_timeout: float | None  # None: the far end decides (a trunk gives up itself)
    caller: User | None = None
    number: Number | None = None
    user: str | None = None  # the contract's `user` for the sidecar, when known before answer
    log_fields: dict[str, Any] = field(default_factory=dict)


def route_invite(config: Config, registrar: Any, strangers: Any, request: Request, peer: Peer,
                 now: float) -> Route | Refusal:
    """Decide a new INVITE (one outside any dialog). `strangers` is the per-source summary
    (b2bua/hostile_summary.py) that counts refused strangers instead of a log line each."""
    trunk = config.trunk_for(peer.host, peer.port)
    if trunk is not None:
        return _inbound(config, registrar, request, trunk, now)
    user = _authenticate(config, registrar, strangers, request, peer, now)
    if isinstance(user, Refusal):
        return user
    dialled = (parse_uri(request.uri).user or "").split(";")[0]
    callee = config.user_by_extension(dialled) or config.user(dialled)
    if callee is not None:
        return _internal(config, registrar, user, callee, now)
    return _outbound(config, user, dialled)


def _authenticate(config: Config, registrar: Any, strangers: Any, request: Request, peer: Peer,
                  now: float) -> User | Refusal:
    """RFC 3261 §22.3: INVITEs from phones are challenged with 407; strangers get 403."""
    if registrar.user_at(peer.host, now=now) is None:
        # Toll-fraud protection: only registered phones may place calls.
        # Counted into the per-source summary (issue 16: never a line per hostile request).
        strangers.count(peer.host, "unknown-source-invite", now, line=(
            f"security event=refused reason=unknown-source ip={peer.host} port={peer.port} "
            f"from={quote(request.headers.get('From'))} to={quote(request.uri)}"))
        return Refusal(403, "Forbidden")
    username, response = registrar.authenticate(request, peer, now, proxy=True)
    if response is not None:
        return Refusal(response.status, response.reason, response=response)
    user = config.user(username or "")
    try:
        from_user = parse_name_addr(request.headers.get("From") or "").uri.user
    except ValueError:
        from_user = None
    if user is None or from_user not in (user.name, user.extension):
        # An authenticated phone must not call as somebody else.
        log.warning("security event=refused reason=from-spoof ip=%s user=%s from=%s", peer.host, username, from_user)
        return Refusal(403, "Forbidden (From does not match credentials)")
    return user


def _inbound(config: Config, registrar: Any, request: Request, trunk: Trunk, now: float) -> Route | Refusal:
    dialled = parse_uri(request.uri).user or ""
    number = config.number(dialled)
    if number is None:
        log.info("call event=rejected status=404 reason=unknown-number ddi=%s trunk=%s", dialled, trunk.name)
        return Refusal(404, "Not Found")
    targets = [
        Target(binding.uri, binding.peer, user, to_user_header(config, user))
        for user in flows.members(config, number)
        for binding in registrar.contacts(user.name, now)
    ]
    return Route(
        direction="inbound", a_channel=0, parties=(Party("external", trunk.name), Party("user", "")),
        targets=targets, ring_timeout=ring_timeout(config, number), number=number,
        log_fields={"route": " ".join(f"{k}:{n}" for k, n in [("number", number.ddi), number.to]),
                    "contacts": len(targets)},
    )


def _internal(config: Config, registrar: Any, caller: User, callee: User, now: float) -> Route:
    targets = [Target(b.uri, b.peer, callee, to_user_header(config, callee)) for b in registrar.contacts(callee.name, now)]
    return Route(
        direction="internal", a_channel=0, parties=(Party("user", caller.name), Party("user", callee.name)),
        targets=targets, ring_timeout=DEFAULT_RING_TIMEOUT, caller=caller, user=callee.name,
        log_fields={"route": f"user:{caller.name} user:{callee.name}", "contacts": len(targets)},
    )


def _outbound(config: Config, caller: User, dialled: str) -> Route | Refusal:
    if not config.trunks:
        return Refusal(404, "Not Found (no trunk for external numbers)")
    if not dialled or not all(c.isdigit() or c in "+*#" for c in dialled):
        return Refusal(404, "Not Found")
    trunk = config.trunks[0]
    trunk_uri = parse_uri(trunk.uri)
    target = f"sip:{dialled}@{bracket(trunk_uri.host)}{':' + str(trunk_uri.port) if trunk_uri.port else ''}"
    transport = (trunk_uri.params.get("transport") or "udp").lower()
    dest = Peer(transport, trunk_uri.host.strip("[]"), trunk_uri.port or 5060)
    return Route(
        direction="outbound", a_channel=1, parties=(Party("external", trunk.name), Party("user", caller.name)),
        targets=[Target(target, dest, None, f"<{target}>")], ring_timeout=None, caller=caller, user=caller.name,
        log_fields={"route": f"user:{caller.name} outbound", "trunk": trunk.name, "dialled": dialled},
    )


def ring_timeout(config: Config, number: Number) -> float:
    kind, name = number.to
    group = config.ring_group(name) if kind == "ring_group" else None
    return group.ring_timeout if group else DEFAULT_RING_TIMEOUT  # a number straight to a user rings as a group would


def to_user_header(config: Config, user: User) -> str:
    return f"<sip:{user.name}@{config.server.realm}>"


def decide_recording(config: Config, seam: Any, direction: str, number: Number | None, caller: User | None,
                     answered_by: User | None) -> bool:
    """Walk the contract's route now that we know who answered; fills the seam's route."""
    if direction == "inbound":
        assert number is not None and answered_by is not None
        route = flows.inbound(config, number, answered_by)
        seam.user = answered_by.name
        seam.parties[1].name = answered_by.name
    elif direction == "outbound":
        route = flows.outbound(caller)
    else:
        callee = answered_by or config.user(seam.user or "")
        route = flows.internal(caller, callee)
    seam.route = route.steps
    seam.record_at_answer = route.recorded(config)
    return seam.record_at_answer


def quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
