"""The Wattfare server SDK: mint session tokens and call the gateway for an app's users.

Runs on the app's backend, next to the app's secret key::

    import wattfare

    client = wattfare.Wattfare(os.environ["WATTFARE_SECRET_KEY"],
                               base_url="http://127.0.0.1:8787")

    # Hand a browser a 10-minute session token (minted locally, no network call).
    session = client.create_session("user-42", monthly_usd=10)
    return JSONResponse(session.to_dict())

    # Or call the gateway for a user from the backend with the official openai SDK; the
    # client's session token is renewed before it expires.
    openai_client = client.user("user-42", monthly_usd=10).openai()
    openai_client.chat.completions.create(model="openai/gpt-4o-mini", messages=[...])

``UserClient.openai()`` and ``.async_openai()`` need the optional ``openai`` package (the
``sdk`` extra: ``pip install -e '.[sdk]'`` from a clone); the rest of the SDK does not.
"""

from __future__ import annotations

from gateway import __version__
from wattfare._client import UserClient, Wattfare
from wattfare._session import Session

__all__ = ["Session", "UserClient", "Wattfare", "__version__"]
