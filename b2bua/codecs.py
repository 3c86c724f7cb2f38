"""Which codecs each leg is offered and answered with: the one place that decides.

We are the media endpoint of both legs and the media core decodes, records and
transcodes G.711 (rtp/g711.py), so each leg is negotiated on its own (RFC 3264):

- an offer we pass on to the other leg lists every codec we take (`[media] codecs`),
  the far party's own preference first (no transcoding when both sides share a law),
  and telephone-event (RFC 4733) so *1 works whatever the first party sent;
- our answer to an offerer picks from its offer only (RFC 3264 §6.1): the codec the
  other leg chose when the offerer has it, else the offerer's first one we take; and
  its telephone-event, which the relay uses for *1 even if the other leg has none.

A PCMA-only trunk calling a PCMU-only phone is answered PCMA, offered PCMU and PCMA,
and the relay transcodes between the laws; 488 only when an offer has none of our
codecs. G.722 (the contract's `[media] codecs = ["G722", ...]`) is one more `Codec`
here once the media core carries it.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2bua.sdp import Format, SessionDescription, formats

#: RFC 4733 §7.1.1: the encoding name of DTMF events.
TELEPHONE_EVENT = "TELEPHONE-EVENT"
#: The payload type we give telephone-event when we add it (a dynamic type, RFC 3551 §3;
#: 101 is what most phones use, which keeps captures readable).
OUR_EVENT_PT = 101
#: RFC 4733 §7.1.1: events 0-15 are the DTMF digits and 16 flash; what we relay.
EVENT_FMTP = "0-16"


@dataclass(frozen=True)
class Codec:
    """An audio codec the media core can decode, record and transcode."""

    name: str  # the rtpmap encoding name, upper case (RFC 3551 §6)
    payload_type: int  # the static type we offer it with
    clock_rate: int

    @property
    def format(self) -> Format:
        return Format(self.payload_type, self.name, self.clock_rate)


#: Every codec the media core handles, by name: G.711's two laws (RFC 3551 §4.5.14).
KNOWN: dict[str, Codec] = {
    "PCMU": Codec("PCMU", 0, 8000),
    "PCMA": Codec("PCMA", 8, 8000),
}
#: `[media] codecs` when the file says nothing: both laws, mu-law first (RFC 3551's order).
DEFAULT_CODECS = ("PCMU", "PCMA")


class CodecPolicy:
    """The codecs we offer and accept, in our order of preference."""

    def __init__(self, names: tuple[str, ...] = DEFAULT_CODECS) -> None:
        unknown = [n for n in names if n.upper() not in KNOWN]
        if unknown or not names:
            raise ValueError(f"codecs must be among {sorted(KNOWN)}, got {list(names)}")
        self.codecs = tuple(KNOWN[n.upper()] for n in names)

    def ours(self, f: Format) -> bool:
        """Is `f` one of our codecs, under its static payload type? The media core knows G.711
        by types 0 and 8 (RFC 3551 §6) and relays the payload type byte as it came; a party
        that names PCMU `96` would get a call we answered and never heard (silence both ways,
        an empty recording), so such a format is not ours: another law in the offer is picked,
        or the call gets 488 with its Warning."""
        return any(c.name == f.name and c.clock_rate == f.clock_rate and c.payload_type == f.payload_type
                   for c in self.codecs)

    def usable(self, description: SessionDescription | None) -> bool:
        """Does an offer list at least one codec we take? (else 488, RFC 3261 §21.4.26)"""
        audio = description.first_audio() if description is not None else None
        return audio is not None and any(self.ours(f) for f in formats(audio))

    def offer_for_other_leg(self, offer: SessionDescription) -> list[Format]:
        """What we offer the other leg for `offer`: its codecs we take in its order, then
        our others in ours, then telephone-event (its own, or ours)."""
        audio = offer.first_audio()
        theirs = formats(audio) if audio is not None else []
        # Our codecs under our static types, whatever types the party gave them: the other
        # leg negotiates on its own, and the media core knows G.711 by its static types.
        out = [KNOWN[f.name].format for f in theirs if self.ours(f)]
        names = {f.name for f in out}
        out += [c.format for c in self.codecs if c.name not in names]
        out.append(_event(theirs) or Format(OUR_EVENT_PT, TELEPHONE_EVENT, 8000, EVENT_FMTP))
        return _unique_types(out)

    def own_offer(self, first: str | None = None) -> list[Format]:
        """Our offer when the party sent none (late offer): all our codecs, `first` first."""
        out = sorted(self.codecs, key=lambda c: c.name != first)
        return [c.format for c in out] + [Format(OUR_EVENT_PT, TELEPHONE_EVENT, 8000, EVENT_FMTP)]

    def answer_for_offerer(self, offer: SessionDescription, chosen: str | None) -> list[Format] | None:
        """Our answer's formats to `offer`, the other leg having chosen codec `chosen`:
        that codec if the offer has it, else the offer's first of ours; its telephone-event
        if it offered one. None when the offer has none of our codecs."""
        audio = offer.first_audio()
        theirs = formats(audio) if audio is not None else []
        usable = [f for f in theirs if self.ours(f)]
        if not usable:
            return None
        pick = next((f for f in usable if f.name == chosen), usable[0])
        event = _event(theirs)
        return [pick] + ([event] if event is not None else [])


def _event(theirs: list[Format]) -> Format | None:
    """The party's telephone-event at 8000 Hz (RFC 4733 §2.1: events use the audio's clock)."""
    return next((f for f in theirs if f.name == TELEPHONE_EVENT and f.clock_rate == 8000), None)


def _unique_types(out: list[Format]) -> list[Format]:
    """One format per payload type (a party's telephone-event on a type we use for a codec
    would be ambiguous): the first wins."""
    seen: set[int] = set()
    keep = []
    for f in out:
        if f.payload_type not in seen:
            seen.add(f.payload_type)
            keep.append(f)
    return keep
