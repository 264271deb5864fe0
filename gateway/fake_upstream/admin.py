"""Test-only knobs on accounts (not OpenRouter's API): set credits, limits, revoke keys.

- `POST /_fake/person {"user_id", "credits_usd"?}`: create the person (with the default
  credits) or set their credits; answers the person, `{"user_id", "credits_nano_usd",
  "usage_nano_usd", "remaining_nano_usd"}`.
- `POST /_fake/key {"user_id", "limit_usd"?}`: issue a key billed to that person without
  the browser flow; answers 201 `{"key", "user_id", "limit_nano_usd", "revoked"}`.
- `POST /_fake/key {"key", "limit_usd"?, "revoked"?}`: change an issued key (`limit_usd`
  null: no limit); answers the key; 404 for a key that was never issued.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson
from starlette.types import Receive, Send

from gateway.fake_upstream.accounts import Accounts, IssuedKey, usd_of
from gateway.fake_upstream.asgi import BodyTooLarge, read_body, respond
from gateway.fake_upstream.encoding import dumps
from gateway.fake_upstream.wire import error_body

__all__ = ["USER_ID", "set_key", "set_person"]

USER_ID: Final = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
"""What a person's id may be made of (the `/auth` page's account field, too)."""

_MAX_BODY: Final = 64 * 1024


class _Invalid(ValueError):
    pass


async def _object(receive: Receive, send: Send) -> dict[str, Any] | None:
    try:
        raw = await read_body(receive, _MAX_BODY)
    except BodyTooLarge:
        await respond(send, 413, error_body(413, "Request body too large"))
        return None
    if raw is None:
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        await respond(send, 400, error_body(400, "The body must be a JSON object"))
        return None
    return body


def _user_id(body: dict[str, Any]) -> str:
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not USER_ID.fullmatch(user_id):
        raise _Invalid("user_id must be 1-64 letters, digits or _.@+-")
    return user_id


def _limit(body: dict[str, Any]) -> int | None:
    value = body.get("limit_usd")
    if value is None:
        return None
    try:
        return usd_of(value)
    except ValueError as exc:
        raise _Invalid(f"limit_usd {exc}") from None


def _key_json(issued: IssuedKey) -> bytes:
    return dumps(
        {
            "key": issued.key,
            "user_id": issued.user_id,
            "limit_nano_usd": issued.limit_nano,
            "usage_nano_usd": issued.usage_nano,
            "revoked": issued.revoked,
        }
    )


async def set_person(accounts: Accounts, receive: Receive, send: Send) -> None:
    """`POST /_fake/person`."""
    body = await _object(receive, send)
    if body is None:
        return
    try:
        user_id = _user_id(body)
        credits = usd_of(body["credits_usd"]) if "credits_usd" in body else None
    except _Invalid as exc:
        await respond(send, 400, error_body(400, str(exc)))
        return
    except ValueError as exc:
        await respond(send, 400, error_body(400, f"credits_usd {exc}"))
        return
    person = accounts.person(user_id)
    if credits is not None:
        person.credits_nano = credits
    await respond(send, 200, dumps(person.as_json()))


async def set_key(accounts: Accounts, receive: Receive, send: Send) -> None:
    """`POST /_fake/key`."""
    body = await _object(receive, send)
    if body is None:
        return
    key = body.get("key")
    try:
        if key is None:
            issued = accounts.issue(_user_id(body), limit_nano=_limit(body))
            await respond(send, 201, _key_json(issued))
            return
        revoked = body.get("revoked", False)
        if not isinstance(key, str) or not isinstance(revoked, bool):
            raise _Invalid("key must be a string and revoked true or false")
        limit = _limit(body)
    except _Invalid as exc:
        await respond(send, 400, error_body(400, str(exc)))
        return
    found = accounts.issued(key)
    if found is None:
        await respond(send, 404, error_body(404, "No such key"))
        return
    if "limit_usd" in body:
        found.limit_nano = limit
    if "revoked" in body:
        found.revoked = revoked
    await respond(send, 200, _key_json(found))
