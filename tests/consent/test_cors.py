"""The API's CORS: registered origins only, per app; secret keys refused from browsers."""

from __future__ import annotations

import pytest

from .helpers import APP_ORIGIN, OTHER_ORIGIN, Env


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/connect", "/v1/connection", "/v1/models"]
)
def test_preflight_for_a_registered_origin(env: Env, path: str) -> None:
    response = env.client.options(
        path, headers={"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
                       "Access-Control-Request-Headers": "authorization, content-type"},
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "authorization" in response.headers["access-control-allow-headers"]
    assert "DELETE" in response.headers["access-control-allow-methods"]
    assert response.headers["vary"] == "Origin"


def test_preflight_for_an_unknown_origin_is_refused(env: Env) -> None:
    response = env.client.options(
        "/v1/chat/completions",
        headers={"Origin": "http://evil.localhost", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert response.json()["error"]["code"] == "origin_not_allowed"


def test_response_names_the_origin_never_star(env: Env) -> None:
    response = env.client.get(
        "/v1/connection", headers={"Authorization": f"Bearer {env.token()}", "Origin": APP_ORIGIN}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/connection"]
)
def test_token_of_an_app_used_from_another_apps_origin(env: Env, path: str) -> None:
    response = env.client.post(
        path, headers={"Authorization": f"Bearer {env.token()}", "Origin": OTHER_ORIGIN},
        content=b"{}",
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    # Readable by that page (its origin is registered), so the SDK can report the code.
    assert response.headers["access-control-allow-origin"] == OTHER_ORIGIN


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/connection", "/v1/sessions", "/v1/connect"]
)
def test_secret_key_from_a_browser_is_refused(env: Env, path: str) -> None:
    response = env.client.post(
        path,
        headers={"Authorization": f"Bearer {env.live.keys.secret_key}", "Origin": APP_ORIGIN,
                 "Wattfare-User": "u1"},
        content=b"{}",
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert "browser" in response.json()["error"]["message"]


def test_server_calls_without_origin_are_untouched(env: Env) -> None:
    response = env.client.get(
        "/v1/connection",
        headers={"Authorization": f"Bearer {env.live.keys.secret_key}", "Wattfare-User": "u1"},
    )
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_sdk_is_importable_from_any_origin(env: Env) -> None:
    response = env.client.get("/sdk/wattfare.js", headers={"Origin": APP_ORIGIN})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["access-control-allow-origin"] == "*"
    assert "export class Wattfare" in response.text
    assert "event.origin !== this.origin" in response.text


def test_sdk_is_the_js_packages_client_build(env: Env) -> None:
    # One source of truth: the served file is wattfare/client's build (the JS tests check
    # that it equals a fresh build of js/src/client/index.ts).
    response = env.client.get("/sdk/wattfare.js")
    assert response.text.startswith("// Wattfare browser SDK (wattfare/client)")
    assert not any(line.startswith("import ") for line in response.text.splitlines())


@pytest.mark.parametrize(
    ("origin", "registered"),
    [
        pytest.param(APP_ORIGIN, True, id="registered"),
        pytest.param("http://elsewhere.localhost:9", False, id="not-registered"),
    ],
)
def test_origin_check_answers_any_page(env: Env, origin: str, registered: bool) -> None:
    response = env.client.get(
        "/sdk/origin", params={"key": env.live.keys.publishable_key}, headers={"Origin": origin}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json() == {"origin": origin, "registered": registered}


@pytest.mark.parametrize(
    ("key", "origin", "code"),
    [
        pytest.param("sk_live_x", APP_ORIGIN, "invalid_api_key", id="not-a-publishable-key"),
        pytest.param("pk_live_" + "A" * 43, APP_ORIGIN, "invalid_api_key", id="unknown-app"),
        pytest.param(None, None, "invalid_request", id="no-origin"),
    ],
)
def test_origin_check_refusals(env: Env, key: str | None, origin: str | None, code: str) -> None:
    headers = {"Origin": origin} if origin else {}
    response = env.client.get(
        "/sdk/origin", params={"key": key or env.live.keys.publishable_key}, headers=headers
    )
    assert response.status_code in (400, 401)
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json()["error"]["code"] == code
