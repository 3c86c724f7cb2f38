"""Digest nonces across workers: a challenge from one authenticator is answered to another,
a replay to any of them is refused, and a Redis outage degrades to per-worker checks
(with a real redis-server started by the fixture)."""

from __future__ import annotations

import shutil

from b2bua import redis_server
from b2bua.auth import BAD_NONCE, OK, REPLAY, STALE, DigestAuthenticator, compute_response, parse_auth_header
from b2bua.nonce_counts import RedisNonceCounts, shared_secret
from b2bua.shared_state import sync_client
from tests.redis_fixture import redis, redis_module  # noqa: F401 - fixtures

REALM = "pbx.example"
PASSWORDS = {"alice": "alice-secret"}
T0 = 1_700_000_000.0


def answer(challenge: str, nc: int = 1, password: str = "alice-secret") -> str:
    p = parse_auth_header(challenge)[1]  # type: ignore[index]
    ncs = f"{nc:08x}"
    resp = compute_response(p["algorithm"], "alice", REALM, password, "REGISTER", "sip:pbx.example", p["nonce"],
                            qop="auth", nc=ncs, cnonce="c0ffee")
    return (f'Digest username="alice",realm="{REALM}",nonce="{p["nonce"]}",uri="sip:pbx.example",'
            f'response="{resp}",algorithm={p["algorithm"]},cnonce="c0ffee",nc={ncs},qop=auth,opaque="{p["opaque"]}"')


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def worker(url: str, clock: Clock | None = None, utc: float = T0) -> tuple[DigestAuthenticator, RedisNonceCounts]:
    """What open_stores gives each worker: the shared secret and the shared count table."""
    client = sync_client(url)
    secret = shared_secret(sync_client(url, 2.0))
    counts = RedisNonceCounts(client, secret=secret, since=T0 - 60, utc=lambda: utc,
                              **({"clock": clock} if clock else {}))
    return DigestAuthenticator(REALM, secret, shared=counts), counts


def test_a_challenge_from_one_worker_is_answered_to_another_and_replays_are_refused(redis) -> None:  # noqa: F811
    (one, _), (two, _), (three, _) = worker(redis.url), worker(redis.url), worker(redis.url)
    challenge = one.challenge(T0)[0]
    first = answer(challenge, nc=1)
    assert two.verify("REGISTER", first, PASSWORDS.get, T0 + 1).reason == OK
    assert three.verify("REGISTER", first, PASSWORDS.get, T0 + 2).reason == REPLAY  # captured and replayed
    assert one.verify("REGISTER", first, PASSWORDS.get, T0 + 2).reason == REPLAY
    assert three.verify("REGISTER", answer(challenge, nc=2), PASSWORDS.get, T0 + 3).reason == OK  # nc goes up
    assert one.verify("REGISTER", answer(challenge, nc=2), PASSWORDS.get, T0 + 3).reason == REPLAY


def test_without_the_shared_secret_another_worker_cannot_verify() -> None:
    """Why the secret is shared: per-process secrets (b2bua run) make other workers' nonces foreign."""
    one, two = DigestAuthenticator(REALM, b"a" * 32), DigestAuthenticator(REALM, b"b" * 32)
    assert two.verify("REGISTER", answer(one.challenge(T0)[0]), PASSWORDS.get, T0 + 1).reason == BAD_NONCE


def test_every_worker_gets_the_same_secret_and_a_redis_that_lost_it_gets_it_back(redis) -> None:  # noqa: F811
    client = sync_client(redis.url, 2.0)
    secret = shared_secret(client)
    assert shared_secret(sync_client(redis.url, 2.0)) == secret and len(secret) == 32
    counts = RedisNonceCounts(sync_client(redis.url), secret=secret)
    client.flushall()  # as a Redis restarted without its data
    counts.after_outage()  # what the registrations' link calls when Redis answers again
    assert shared_secret(sync_client(redis.url, 2.0)) == secret


def test_redis_away_each_worker_checks_alone_and_old_nonces_are_stale_when_it_is_back(redis) -> None:  # noqa: F811
    clock = Clock()
    (one, one_counts), (two, two_counts) = worker(redis.url, clock, T0 + 2.5), worker(redis.url, clock, T0 + 2.5)
    challenge = one.challenge(T0)[0]
    redis.stop(remove_dir=False)
    try:
        # Redis away: the worker's own table answers (no hang, no failure for the phone) ...
        assert one.verify("REGISTER", answer(challenge, 1), PASSWORDS.get, T0 + 1).reason == OK
        # ... and still refuses a replay to the same worker.
        assert one.verify("REGISTER", answer(challenge, 1), PASSWORDS.get, T0 + 2).reason == REPLAY
    finally:
        redis.restart()
    for counts in (one_counts, two_counts):  # each worker's registrations link sees Redis back
        counts.after_outage()
    # Counts made during the outage are not in Redis, so a nonce issued before it came back
    # cannot be vouched for anywhere: stale (the phone fetches a fresh nonce), not a replay window.
    stale = two.verify("REGISTER", answer(challenge, 1), PASSWORDS.get, T0 + 3)
    assert stale.reason == STALE and stale.stale
    fresh = one.challenge(T0 + 4)[0]
    assert two.verify("REGISTER", answer(fresh, 1), PASSWORDS.get, T0 + 5).reason == OK
    assert one.verify("REGISTER", answer(fresh, 1), PASSWORDS.get, T0 + 6).reason == REPLAY


def test_a_redis_that_lost_its_data_cannot_be_used_to_replay(redis) -> None:  # noqa: F811
    (one, _), (two, _) = worker(redis.url), worker(redis.url)
    challenge = one.challenge(T0)[0]
    assert one.verify("REGISTER", answer(challenge, 1), PASSWORDS.get, T0 + 1).reason == OK
    redis.stop(remove_dir=False, kill=True)
    shutil.rmtree(redis.directory)
    redis.directory.mkdir()
    redis.restart()
    assert redis_server.answers(redis.host, redis.port)
    # The count of nc=1 was lost with the data; the replay is answered stale, never OK.
    result = two.verify("REGISTER", answer(challenge, 1), PASSWORDS.get, T0 + 2)
    assert result.reason == STALE
