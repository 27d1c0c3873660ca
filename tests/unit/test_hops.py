"""Signed hops: what a runner accepts from a router, and what it refuses."""

from __future__ import annotations

import pytest

from edgeinfer.shared.hops import HopClaims, HopSigner, HopVerifier, InvalidHop, KeysUnavailable

NOW_MS = 1_800_000_000_000


def verifier_trusting(*signers: HopSigner) -> tuple[HopVerifier, list[str]]:
    keys = {s.kid: s.public_key for s in signers}
    fetched: list[str] = []

    async def fetch(kid: str) -> bytes | None:
        fetched.append(kid)
        return keys.get(kid)

    return HopVerifier(fetch), fetched


async def test_a_token_verifies_and_carries_what_the_router_signed() -> None:
    router = HopSigner()
    verifier, fetched = verifier_trusting(router)
    token = router.token("ten_a", "dep_1", "req_1", NOW_MS)
    assert await verifier.verify(token, "dep_1", NOW_MS) == HopClaims(
        "ten_a", "dep_1", "req_1", NOW_MS + 30_000)
    await verifier.verify(router.token("ten_a", "dep_1", "req_2", NOW_MS), "dep_1", NOW_MS)
    assert fetched == [router.kid]  # the key is fetched once, then kept


@pytest.mark.parametrize("why", ["missing", "malformed", "another key", "tampered claims",
                                 "expired", "another deployment", "unknown key"])
async def test_what_a_runner_refuses(why: str) -> None:
    router, stranger = HopSigner(), HopSigner()
    verifier, _ = verifier_trusting(router)
    good = router.token("ten_a", "dep_1", "req_1", NOW_MS)
    kid, _, signature = good.split(".")
    token: str | None = {
        "missing": None,
        "malformed": "abc",
        # The router's key id on a token signed by another key.
        "another key": HopSigner(router.kid).token("ten_a", "dep_1", "req_1", NOW_MS),
        # Someone else's tenant spliced into a genuine token.
        "tampered claims": ".".join([kid, stranger.token("ten_b", "dep_1", "req_1", NOW_MS)
                                     .split(".")[1], signature]),
        "expired": router.token("ten_a", "dep_1", "req_1", NOW_MS - 31_000),
        "another deployment": router.token("ten_a", "dep_2", "req_1", NOW_MS),
        "unknown key": stranger.token("ten_a", "dep_1", "req_1", NOW_MS),
    }[why]
    with pytest.raises(InvalidHop):
        await verifier.verify(token, "dep_1", NOW_MS)


async def test_an_unreachable_key_store_is_unavailable_not_invalid() -> None:
    async def fetch(kid: str) -> bytes | None:
        raise TimeoutError("NATS is away")

    token = HopSigner().token("ten_a", "dep_1", "req_1", NOW_MS)
    with pytest.raises(KeysUnavailable):
        await HopVerifier(fetch).verify(token, "dep_1", NOW_MS)
