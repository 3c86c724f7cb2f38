"""The *1 feature code: a user's `*` then `1` toggles the call's recording.

Contract, "*1: pause and resume": the digits of the sequence are not passed on; all
other digits are. Since `*` might start *1, it is held until the next digit or the
timeout decides: `1` in time toggles (both swallowed), another digit releases the held
`*` first and then passes the new digit, the timeout releases the `*` late.

The machine is sans-IO with an injected clock (style.md §1): it is fed digits and
`now`, and answers with actions for the relay. Its transitions are a table (style.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

FEATURE_TIMEOUT = 2.0  # seconds between `*` and `1`: the inter-digit timeout of common PBX feature codes
FEATURE_PREFIX = "*"
FEATURE_DIGIT = "1"


class State(Enum):
    IDLE = "Idle"  # nothing held
    STAR_HELD = "StarHeld"  # a `*` was swallowed and waits for its next digit


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass the digit just fed on, as it arrived (its own packets)."""

    digit: str


@dataclass(frozen=True, slots=True)
class Release:
    """Pass on a digit that was held back: its packets were swallowed, so regenerate it."""

    digit: str


@dataclass(frozen=True, slots=True)
class Toggle:
    """*1 completed: toggle the call's recording."""


Action = Forward | Release | Toggle

# (state, digit class) -> (actions to emit, next state). Digit classes: "*", "1", "other", "timeout".
# Placeholders: "held" is the held `*` released late, "this" the digit just fed.
_TRANSITIONS: dict[tuple[State, str], tuple[tuple[str, ...], State]] = {
    (State.IDLE, "*"): ((), State.STAR_HELD),
    (State.IDLE, "1"): (("forward",), State.IDLE),
    (State.IDLE, "other"): (("forward",), State.IDLE),
    (State.STAR_HELD, "1"): (("toggle",), State.IDLE),
    (State.STAR_HELD, "*"): (("release",), State.STAR_HELD),  # `**1`: the first `*` passes, the second may start *1
    (State.STAR_HELD, "other"): (("release", "forward"), State.IDLE),
    (State.STAR_HELD, "timeout"): (("release",), State.IDLE),
}


class FeatureMachine:
    """Per-party *1 detector. `enabled` is False for the external party and when the
    organisation's Call Recording is off: then every digit is forwarded."""

    __slots__ = ("enabled", "timeout", "state", "_held_at")

    def __init__(self, enabled: bool = True, timeout: float = FEATURE_TIMEOUT) -> None:
        self.enabled = enabled
        self.timeout = timeout
        self.state = State.IDLE
        self._held_at = 0.0

    def digit(self, digit: str, now: float) -> list[Action]:
        """Feed one key press; returns what to do, in order."""
        if not self.enabled:
            return [Forward(digit)]
        actions = self.poll(now)  # a `*` whose timeout passed unnoticed is released first
        kind = digit if digit in (FEATURE_PREFIX, FEATURE_DIGIT) else "other"
        actions.extend(self._step(kind, digit, now))
        return actions

    def poll(self, now: float) -> list[Action]:
        """Drive the timeout; returns the late release of a held `*` when it is due."""
        if self.state is State.STAR_HELD and now - self._held_at >= self.timeout:
            return self._step("timeout", "", now)
        return []

    def next_deadline(self) -> float | None:
        """When `poll` next has something to do."""
        return self._held_at + self.timeout if self.state is State.STAR_HELD else None

    def _step(self, kind: str, digit: str, now: float) -> list[Action]:
        emits, next_state = _TRANSITIONS[(self.state, kind)]
        actions: list[Action] = []
        for emit in emits:
            if emit == "forward":
                actions.append(Forward(digit))
            elif emit == "release":
                actions.append(Release(FEATURE_PREFIX))
            else:
                actions.append(Toggle())
        if next_state is State.STAR_HELD:
            self._held_at = now
        self.state = next_state
        return actions
