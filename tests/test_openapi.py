"""The OpenAPI document is true: its paths and methods are exactly the app's routes, it
is served with this gateway's URL, and it is a valid OpenAPI 3.1 document."""

from __future__ import annotations

import re
from pathlib import Path

from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from gateway.app import CHAT_PATH, create_app
from gateway.config import settings_from_mapping
from gateway.openapi import ERROR_CODES, PATHS, openapi_document

PUBLIC = "http://gateway.example:8787"


def app_routes() -> set[tuple[str, str]]:
    """(path, method) of every route the app serves, path parameters as OpenAPI writes
    them (``{model:path}`` is ``{model}``)."""
    app = create_app(settings_from_mapping({}, environ={}))
    found = {(CHAT_PATH, "post")}  # dispatched before the router
    for route in app.router.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in route.methods or ():
            if method != "HEAD":  # Starlette adds HEAD to every GET
                found.add((path, method.lower()))
    return found


def test_document_lists_exactly_the_apps_routes() -> None:
    documented = {
        (path, method) for path, ops in PATHS.items() for method in ops if method != "parameters"
    }
    served = app_routes()
    assert documented - served == set(), "documented but not served"
    assert served - documented == set(), "served but not documented"


def test_every_operation_is_tagged_and_every_error_code_is_known() -> None:
    for path, ops in PATHS.items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            assert op["tags"] in (["api"], ["pages"], ["ops"]), (path, method)
            assert "200" in op["responses"], (path, method)
    source = Path("gateway/errors.py").read_text()
    assert set(re.findall(r'status, type, code = \d+, "\w+", "(\w+)"', source)) == set(
        ERROR_CODES)


def test_served_with_this_gateways_url(tmp_path: Path) -> None:
    settings = settings_from_mapping(
        {"server": {"public_url": PUBLIC}, "store": {"path": str(tmp_path / "w.db")}},
        environ={},
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": PUBLIC}]
    assert doc == openapi_document(public_url=PUBLIC, version=doc["info"]["version"])


def test_is_a_valid_openapi_31_document() -> None:
    validate(openapi_document(public_url=PUBLIC, version="0"))  # raises on any fault
