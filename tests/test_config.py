"""Settings: validated once, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, Settings, load_settings, settings_from_mapping
from gateway.money import NANO_PER_USD

ROOT = Path(__file__).resolve().parent.parent


def test_example_file_documents_the_defaults() -> None:
    example = load_settings(ROOT / "config.example.toml", environ={})
    defaults = settings_from_mapping({}, environ={})
    # The example's relative store path is resolved against its folder.
    assert example.store.path == str(ROOT / "wattfare.db")
    assert example.server == defaults.server
    assert example.upstream == defaults.upstream
    assert example.metering == defaults.metering
    assert example.store == defaults.store.__class__(
        **{**{f: getattr(defaults.store, f) for f in defaults.store.__dataclass_fields__},
           "path": example.store.path}
    )


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, environ={})
    assert settings == Settings(source="<defaults>")
    assert settings.store.backend == "sqlite"


def test_api_key_comes_from_the_named_environment_variable() -> None:
    settings = settings_from_mapping(
        {"upstream": {"api_key_env": "MY_KEY"}}, environ={"MY_KEY": "sk-or-123"}
    )
    assert settings.upstream.api_key == "sk-or-123"


def test_environment_names_the_config_file(tmp_path: Path) -> None:
    file = tmp_path / "w.toml"
    file.write_text('[server]\nport = 9999\n[store]\npath = "data/x.db"\n')
    settings = load_settings(None, environ={"WATTFARE_CONFIG": str(file)})
    assert settings.server.port == 9999
    assert settings.server.public_url == "http://127.0.0.1:9999"
    assert settings.store.path == str(tmp_path / "data" / "x.db")


def test_default_cap_is_integer_nano_usd() -> None:
    settings = settings_from_mapping({"metering": {"default_monthly_usd": 2.5}}, environ={})
    assert settings.metering.default_monthly_nano == 25 * NANO_PER_USD // 10


def test_postgres_takes_its_url_from_the_environment() -> None:
    settings = settings_from_mapping(
        {"store": {"backend": "postgres", "url_env": "DB", "pool_max_size": 20}},
        environ={"DB": "postgresql://u:p@db:5432/wattfare"},
    )
    assert settings.store.url == "postgresql://u:p@db:5432/wattfare"
    assert "u:p" not in repr(settings)  # the URL's password stays out of logs
    assert (settings.store.pool_min_size, settings.store.pool_max_size) == (2, 20)
    with pytest.raises(ConfigError, match=r"^store.url_env: DB must be a postgresql:// URL$"):
        settings_from_mapping({"store": {"backend": "postgres", "url_env": "DB"}},
                              environ={"DB": "mysql://x"})


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        pytest.param({"server": {"port": "80"}}, "server.port", id="port-string"),
        pytest.param({"server": {"port": 70000}}, "server.port", id="port-range"),
        pytest.param({"server": {"public_url": "ftp://x"}}, "server.public_url", id="url"),
        pytest.param({"server": {"access_log": "yes"}}, "server.access_log", id="bool"),
        pytest.param({"upstream": {"idle_timeout_s": 0}}, "upstream.idle_timeout_s", id="zero"),
        pytest.param(
            {"upstream": {"connect_timeout_s": "soon"}}, "upstream.connect_timeout_s", id="nan"
        ),
        pytest.param({"upstream": {"transport": "curl"}}, "upstream.transport", id="choice"),
        pytest.param({"upstream": {"kind": "bedrock"}}, "upstream.kind", id="kind"),
        pytest.param({"upstream": {"prices": {"m": 1}}}, "upstream.prices.m", id="price-shape"),
        pytest.param({"upstream": {"prices": {"m": {"prompt": 1}}}},
                     "upstream.prices.m.completion", id="price-missing"),
        pytest.param({"upstream": {"prices": {"m": {"prompt": -1, "completion": 1}}}},
                     "upstream.prices.m.prompt", id="price-negative"),
        pytest.param({"upstream": {"prices": {"m": {"prompt": 1, "completion": 1, "x": 1}}}},
                     "upstream.prices.m.x", id="price-unknown"),
        pytest.param({"upstreams": {"local": {"kind": "openai"}}}, "upstreams.local.models",
                     id="named-without-models"),
        pytest.param({"upstreams": {"local": {"models": ["a"], "colour": 1}}},
                     "upstreams.local.colour", id="named-unknown-key"),
        pytest.param({"upstreams": {"default": {"models": ["a"]}}}, "upstreams.default",
                     id="named-default"),
        pytest.param({"store": {"backend": "mysql"}}, "store.backend", id="backend"),
        pytest.param(
            {"metering": {"default_monthly_usd": -1}}, "metering.default_monthly_usd", id="neg"
        ),
        pytest.param({"server": {"prot": 1}}, "server.prot", id="unknown-key"),
        pytest.param(
            {"server": {"forwarded_allow_ips": ["10.0.0.300"]}}, "server.forwarded_allow_ips",
            id="not-an-ip",
        ),
        pytest.param(
            {"server": {"forwarded_allow_ips": "127.0.0.1"}}, "server.forwarded_allow_ips",
            id="not-a-list",
        ),
        pytest.param({"server": {"header_timeout_s": 0}}, "server.header_timeout_s", id="head"),
        pytest.param({"server": {"max_header_bytes": 10}}, "server.max_header_bytes", id="hb"),
        pytest.param({"sever": {}}, "sever", id="unknown-section"),
        pytest.param({"store": "x"}, "store", id="not-a-table"),
        pytest.param({"store": {"backend": "postgres"}}, "store.url_env", id="no-url"),
        pytest.param({"store": {"pool_min_size": 0}}, "store.pool_min_size", id="pool-min"),
        pytest.param({"store": {"pool_min_size": 5, "pool_max_size": 2}},
                     "store.pool_max_size", id="pool-order"),
        pytest.param({"store": {"pool_min_size": 1, "pool_max_size": 1}},
                     "store.pool_max_size", id="pool-too-small"),
        pytest.param({"store": {"lease_s": 1}}, "store.lease_s", id="lease"),
    ],
)
def test_a_wrong_value_names_its_key_in_one_line(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(raw, environ={})
    message = str(info.value)
    assert message.startswith(key + ":") or message.startswith(key)
    assert "\n" not in message


def test_unreadable_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(bad, environ={})
