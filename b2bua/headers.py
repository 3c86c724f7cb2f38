"""SIP header values: URIs, name-addr, Via, CSeq (RFC 3261 §19.1, §20, §25.1).

Parsing is lenient where phones differ harmlessly (case, spacing, quoting) and strict
where a wrong reading would misroute a call (hosts, ports, tags). Every failure is a
`ValueError`; the message layer turns it into a 400 naming the header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HOST = re.compile(r"[A-Za-z0-9._-]+\Z")
#: An unquoted display-name is tokens separated by LWS (RFC 3261 §25.1 display-name).
_DISPLAY_TOKENS = re.compile(r"[A-Za-z0-9.!%*_+`'~ \t-]+\Z")
#: A backslash escapes the next character inside a quoted-string (RFC 3261 §25.1 quoted-pair).
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


def split_params(text: str) -> tuple[str, dict[str, str | None]]:
    """`value;a=1;b` → ("value", {"a": "1", "b": None}), respecting quotes."""
    parts = split_quoted(text, ";")
    params: dict[str, str | None] = {}
    for part in parts[1:]:
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        params[name.strip().lower()] = value.strip() if sep else None
    return parts[0].strip(), params


def split_quoted(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes and <...> (RFC 3261 §7.3.1 lists)."""
    if '"' not in text and "<" not in text:
        return text.split(sep)  # the common case, at C speed
    out: list[str] = []
    buf: list[str] = []
    quoted = False
    angle = 0
    i = 0
    while i < len(text):
        c = text[i]
        if quoted:
            buf.append(c)
            if c == "\\" and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
            buf.append(c)
        elif c == "<":
            angle += 1
            buf.append(c)
        elif c == ">":
            angle = max(0, angle - 1)
            buf.append(c)
        elif c == sep and angle == 0:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    out.append("".join(buf))
    return out


def _format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


@dataclass(slots=True)
class SipUri:
    """sip:/sips:/tel: URI (RFC 3261 §19.1.1); other schemes keep their text in `host`."""

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: str | None = None

    def __str__(self) -> str:
        if self.scheme not in ("sip", "sips"):
            return f"{self.scheme}:{self.host}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user + (f":{self.password}" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        port = f":{self.port}" if self.port is not None else ""
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{host}{port}{_format_params(self.params)}{headers}"

    @property
    def host_port(self) -> tuple[str, int | None]:
        return self.host, self.port


def parse_uri(text: str) -> SipUri:
    text = text.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or not scheme:
        raise ValueError(f"not a URI: {text!r}")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        if not all(c.isalnum() or c in "+-." for c in scheme):
            raise ValueError(f"bad URI scheme: {text!r}")
        return SipUri(scheme=scheme, host=rest)
    headers = None
    # The "?" of URI headers comes after the host: a "?" before the last "@" is in the
    # user part, where RFC 3261 §25.1 allows it (RFC 4475 §3.1.1.2 intmeth).
    q = rest.find("?", rest.rfind("@") + 1)
    if q >= 0:
        rest, headers = rest[:q], rest[q + 1 :]
    user = password = None
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
        user, psep, pw = userinfo.partition(":")
        password = pw if psep else None
        if not user:
            raise ValueError(f"empty user in URI: {text!r}")
    hostport, params = split_params(rest)
    host, port = split_host_port(hostport)
    return SipUri(scheme, user, password, host, port, params, headers)


def split_host_port(text: str) -> tuple[str, int | None]:
    """"host", "host:port", "[v6]", "[v6]:port" (RFC 3261 §25.1 hostport)."""
    text = text.strip()
    if not text:
        raise ValueError("empty host")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed IPv6 reference: {text!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        if not host or not all(c in "0123456789abcdefABCDEF:." for c in host):
            raise ValueError(f"bad IPv6 reference: {text!r}")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"bad host: {text!r}")
        return host, _port(rest[1:], text)
    if text.count(":") > 1:
        raise ValueError(f"IPv6 address without brackets: {text!r}")
    host, sep, port = text.partition(":")
    if not _HOST.match(host):
        raise ValueError(f"bad host: {text!r}")
    return host, _port(port, text) if sep else None


def _port(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"bad port: {whole!r}")
    return int(text)


@dataclass(slots=True)
class NameAddr:
    """`"Display" <uri>;params` or a bare addr-spec (RFC 3261 §20.10, §20.20)."""

    display: str | None
    uri: SipUri
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    def __str__(self) -> str:
        # RFC 3261 §25.1 quoted-string: escape the backslash and the quote.
        quoted = self.display.replace("\\", "\\\\").replace('"', '\\"') if self.display else ""
        display = f'"{quoted}" ' if self.display else ""
        return f"{display}<{self.uri}>{_format_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    text = text.strip()
    display_end = 0
    if text.startswith('"'):
        # A quoted display name may itself hold < and > (RFC 3261 §25.1 quoted-string).
        i = 1
        while i < len(text) and text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        if i >= len(text):
            raise ValueError(f"unclosed quote: {text!r}")
        display_end = i + 1
    if "<" in text[display_end:]:
        lt = text.index("<", display_end)
        gt = text.find(">", lt)
        if gt < 0:
            raise ValueError(f"unclosed <: {text!r}")
        display = text[:lt].strip()
        if display.startswith('"') and display.endswith('"') and len(display) >= 2:
            display = _QUOTED_PAIR.sub(r"\1", display[1:-1])  # RFC 3261 §25.1 quoted-pair
        elif display and not _DISPLAY_TOKENS.match(display):
            raise ValueError(f"display name must be tokens or quoted: {display!r}")  # RFC 3261 §25.1
        uri = parse_uri(text[lt + 1 : gt])
        _, params = split_params("x" + text[gt + 1 :])
        return NameAddr(display or None, uri, params)
    # addr-spec: params after ; belong to the header, not the URI (RFC 3261 §20.10).
    value, params = split_params(text)
    if "?" in value[value.rfind("@") + 1 :]:
        # §20.10: a URI with headers must be in <>; bare, it is ambiguous (RFC 4475 §3.1.2.13 regbadct).
        raise ValueError(f"URI with headers outside <>: {text!r}")
    return NameAddr(None, parse_uri(value), params)


@dataclass(slots=True)
class Via:
    """One Via value (RFC 3261 §20.42, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None
    params: dict[str, str | None] = field(default_factory=dict)
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        value = self.params.get("rport")
        return int(value) if value and value.isascii() and value.isdigit() else None

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def sent_by(self) -> tuple[str, int]:
        return self.host.lower(), self.port or 5060

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {host}{port}{_format_params(self.params)}"


def parse_via(text: str) -> Via:
    text = text.strip()
    proto, sep, rest = text.partition(" ")
    if not sep:
        # "SIP / 2.0 / UDP host" with LWS around slashes (RFC 3261 §25.1 SLASH)
        raise ValueError(f"bad Via: {text!r}")
    # Allow LWS around the slashes: rebuild the protocol part up to the host.
    full = " ".join(text.split())
    pieces = full.replace(" / ", "/").replace("/ ", "/").replace(" /", "/")
    proto, sep, rest = pieces.partition(" ")
    parts = proto.split("/")
    if len(parts) != 3 or not sep:
        raise ValueError(f"bad Via: {text!r}")
    name, version, transport = parts
    value, params = split_params(rest)
    host, port = split_host_port(value)
    return Via(transport.upper(), host, port, params, f"{name.upper()}/{version}")


def parse_cseq(text: str) -> tuple[int, str]:
    """`CSeq: 4711 INVITE` (RFC 3261 §20.16: a 32-bit number and a method)."""
    parts = text.split()
    if len(parts) != 2 or not (parts[0].isascii() and parts[0].isdigit()) or len(parts[0]) > 10 or int(parts[0]) >= 2**31:
        raise ValueError(f"bad CSeq: {text!r}")
    return int(parts[0]), parts[1]
