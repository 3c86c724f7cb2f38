"""Which calls are recorded: the contract's walk along a call's route.

Every application a call passes through has Record Calls = yes / no / don't care.
Start from "not recorded"; yes sets on, no sets off, don't care keeps what the previous
application left. The organisation's Call Recording switch gates everything. This one
function backs both live calls and `b2bua check`, so the table an admin reads is the
rule calls follow.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class Record(Enum):
    YES = "yes"
    NO = "no"
    DONT_CARE = "dont_care"

    @classmethod
    def parse(cls, text: str) -> "Record":
        """Accept the file's spelling and the forms people type ("don't care")."""
        key = text.strip().lower().replace("'", "").replace(" ", "_").replace("-", "_")
        if key == "dontcare":
            key = "dont_care"
        return cls(key)


def walk(settings: Iterable[Record], start: bool = False) -> bool:
    """The recording state after passing through `settings` in order."""
    state = start
    for setting in settings:
        if setting is Record.YES:
            state = True
        elif setting is Record.NO:
            state = False
    return state


def starts_recorded(settings: Iterable[Record], call_recording: bool) -> bool:
    """The state a call's recording starts in when it is answered."""
    return call_recording and walk(settings)
