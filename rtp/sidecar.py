"""The JSON sidecar beside each recording (contract: "Recordings").

Written whole to a temporary file and renamed over the old one, so a reader (or a crash)
only ever sees a complete sidecar: the previous one or the new one. `ended` is null until the
call is finalised; that null is how `repair()` recognises an unfinalised recording.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rtp.call import Call


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z suffix, millisecond precision; None stays None (JSON null)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # our datetimes are UTC; naive ones are taken so
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def describe_call(call: Call) -> dict[str, Any]:
    """The fixed part of the sidecar: who and what the call was."""
    return {
        "call_id": call.call_id,
        "direction": call.direction,
        "from": call.from_uri,
        "to": call.to_uri,
        "ddi": call.ddi,
        "user": call.user,
        "route": list(call.route),
        "parties": [{"role": p.role, "name": p.name} for p in call.parties],
    }


def sidecar_text(data: dict[str, Any]) -> str:
    """`data` as JSON, one top-level key per line.

    Why not `json.dump(..., indent=2)`: that takes the json module's pure-Python encoder,
    whose nested functions refer to one another, so every sidecar written left a cycle for
    the garbage collector (two a call). The B2BUA keeps the collector away from long-lived
    objects (b2bua.gc_policy), which is only safe while calls leave no cyclic garbage;
    `json.dumps` of each value uses the C encoder, which leaves none."""
    lines = [f"  {json.dumps(key, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}"
             for key, value in data.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_sidecar(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace `path` with `data` as JSON; raises OSError, leaving the old file."""
    tmp = path.with_name(path.name + ".tmp")
    text = sidecar_text(data)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


def read_sidecar(path: Path) -> dict[str, Any]:
    """Parse a sidecar; raises OSError or ValueError (bad JSON) for the caller to report."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: sidecar is not a JSON object")
    return data
