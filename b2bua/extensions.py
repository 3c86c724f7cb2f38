"""SIP extensions (option tags, RFC 3261 §19.2): which we support, and the Require rule.

RFC 3261 §8.2.2.3: a UAS that does not understand an option tag in a request's Require
header MUST answer 420 (Bad Extension) listing the tags in an Unsupported header, except
for ACK and CANCEL, which are never rejected this way (the INVITE they belong to was
already judged). Without this check an `INVITE ... Require: 100rel` would be answered
as if reliable provisionals were promised (RFC 4475 §3.3.1 `bext01` expects the 420).
"""

from __future__ import annotations

from b2bua.message import Request

#: Option tags this B2BUA implements. None yet: it sends no PRACK (100rel), no session
#: timers (timer), no Replaces/REFER handling on behalf of a phone. A tag is added here
#: only with the code that honours it.
SUPPORTED: frozenset[str] = frozenset()

#: Methods a Require header may not make us refuse (§8.2.2.3).
_EXEMPT = frozenset({"ACK", "CANCEL"})


def unsupported_required(request: Request) -> list[str]:
    """The option tags `request` requires that we do not support, in the order sent and
    spelt as sent, so the Unsupported header names exactly what the peer asked for."""
    if request.method in _EXEMPT:
        return []
    tags: list[str] = []
    for value in request.headers.get_all("Require"):
        for tag in value.split(","):
            tag = tag.strip()
            if tag and tag not in SUPPORTED and tag not in tags:
                tags.append(tag)
    return tags
