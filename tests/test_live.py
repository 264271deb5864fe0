"""The open streams of this process, by connection, as revocations find them."""

from __future__ import annotations

from gateway.live import LiveStreams


def test_a_revocation_flags_every_stream_of_its_connection_and_no_other() -> None:
    live = LiveStreams()
    first, second = live.open(("app", "u1")), live.open(("app", "u1"))
    other_user, other_app = live.open(("app", "u2")), live.open(("app2", "u1"))
    assert live.count == 4
    assert live.revoke(("app", "u1")) == 2
    assert first.revoked and second.revoked
    assert not other_user.revoked and not other_app.revoked
    assert live.revoke(("app", "nobody")) == 0


def test_closing_forgets_only_that_stream() -> None:
    live = LiveStreams()
    first, second = live.open(("app", "u1")), live.open(("app", "u1"))
    live.close(("app", "u1"), first)
    live.close(("app", "u1"), first)  # twice: no effect
    assert live.count == 1
    assert live.revoke(("app", "u1")) == 1
    assert second.revoked and not first.revoked
    live.close(("app", "u1"), second)
    assert live.count == 0
    assert live.revoke(("app", "u1")) == 0
    live.close(("app", "never"), second)  # an unknown connection: no effect
    assert live.count == 0
