"""How we name ourselves on the wire: Via, Contact, User-Agent.

One place, so every request and response we build advertises the same address.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

#: RFC 3261 §8.1.1.7: branches we create start with the magic cookie.
MAGIC_COOKIE = "z9hG4bK"


@dataclass(frozen=True)
class Identity:
    host: str  # the address peers reach us on (never a wildcard)
    port: int
    user_agent: str = "b2bua/0.1"

    @property
    def host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def via(self, transport: str) -> str:
        """A Via with a fresh branch and rport (RFC 3581 §3: responses come back to our source port)."""
        return f"SIP/2.0/{transport.upper()} {self.host_port};branch={MAGIC_COOKIE}{secrets.token_hex(8)};rport"

    def contact(self, transport: str = "udp") -> str:
        suffix = ";transport=tcp" if transport.lower() == "tcp" else ""
        return f"<sip:b2bua@{self.host_port}{suffix}>"
