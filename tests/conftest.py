"""Helpers shared by the unit tests.

`make_call` is the one way tests build the signalling/media seam's `Call`: an inbound
call from the carrier to alice on 441632960000, recorded by default. Each test names
only what it is about (`make_call("core2")`, `make_call(record=False)`,
`make_call(started=...)`), so a new field on `Call` is added here once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rtp.call import Call, Party

#: When the test call started (UTC): recordings land under 2024/05/01.
CALL_STARTED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_call(call_id: str = "c1", *, record: bool = True, enabled: bool = True, **fields: Any) -> Call:
    """A `Call` as the B2BUA hands it to media at answer; `fields` override any default."""
    values: dict[str, Any] = dict(
        call_id=call_id,
        direction="inbound",
        from_uri="sip:+441632960999@carrier",
        to_uri="sip:441632960000@pbx.example",
        ddi="441632960000",
        user="alice",
        started=CALL_STARTED,
        route=("number:441632960000", "user:alice"),
        record_at_answer=record,
        recording_enabled=enabled,
        parties=(Party("external", "carrier"), Party("user", "alice")),
    )
    values.update(fields)
    return Call(**values)
