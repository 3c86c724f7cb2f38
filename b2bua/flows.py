"""The call flow: which applications a call passes through, and what that decides.

Routes are written as the contract's `b2bua check` prints them:
``("number:441632960000", "ring_group:sales", "user:alice")`` for an inbound call,
``("user:alice", "outbound")`` for a call out through the trunk and
``("user:alice", "user:bob")`` for a call between two users.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2bua.config import Config, Number, User
from b2bua.policy import Record, starts_recorded


@dataclass(frozen=True)
class Route:
    """The path a call took and each application's Record Calls setting on it."""

    steps: tuple[str, ...]
    settings: tuple[tuple[str, Record], ...]  # (application, its setting), in call order

    def recorded(self, config: Config) -> bool:
        return starts_recorded((s for _, s in self.settings), config.organisation.call_recording)


def inbound(config: Config, number: Number, user: User) -> Route:
    """A trunk call to `number` answered by `user` (through the number's ring group, if any)."""
    steps = [f"number:{number.ddi}"]
    settings = [(f"number:{number.ddi}", number.record)]
    kind, name = number.to
    if kind == "ring_group":
        group = config.ring_group(name)
        assert group is not None  # validated by config
        steps.append(f"ring_group:{group.name}")
        settings.append((f"ring_group:{group.name}", group.record))
    steps.append(f"user:{user.name}")
    settings.append((f"user:{user.name} inbound", user.record_inbound))
    return Route(tuple(steps), tuple(settings))


def outbound(user: User) -> Route:
    """A user's call out through the trunk."""
    return Route((f"user:{user.name}", "outbound"), ((f"user:{user.name} outbound", user.record_outbound),))


def internal(caller: User, callee: User) -> Route:
    """A call between two users: the caller's outbound setting, then the callee's inbound."""
    return Route(
        (f"user:{caller.name}", f"user:{callee.name}"),
        (
            (f"user:{caller.name} outbound", caller.record_outbound),
            (f"user:{callee.name} inbound", callee.record_inbound),
        ),
    )


def members(config: Config, number: Number) -> list[User]:
    """The users a call to `number` rings, in the order the file lists them."""
    kind, name = number.to
    if kind == "user":
        user = config.user(name)
        return [user] if user else []
    group = config.ring_group(name)
    names = group.members if group else ()
    return [u for u in (config.user(n) for n in names) if u is not None]


def all_routes(config: Config) -> list[Route]:
    """Every route `b2bua check` reports: each number to each user it rings, then each user's outbound."""
    routes = [inbound(config, number, user) for number in config.numbers for user in members(config, number)]
    routes += [outbound(user) for user in config.users]
    return routes
