"""Settings: one TOML file, validated once at start-up.

Every command takes ``--config FILE``; without it ``$WATTFARE_CONFIG``; without that, the
built-in defaults below. A wrong value raises :class:`ConfigError` whose message is one
line naming the key, e.g. ``upstream.idle_timeout_s: must be a number > 0, got "soon"``.
``config.example.toml`` documents every key.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.metering import Price
from gateway.money import NANO_PER_USD, pico_per_token_from_per_million, usd_to_nano


class ConfigError(ValueError):
    """A configuration value that stops start-up; the message is one line."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8787
    public_url: str = "http://127.0.0.1:8787"
    max_body_bytes: int = 1_048_576
    access_log: bool = True
    workers: int = 1
    # What `wattfare serve` allows a client before it answers for it (gateway/server.py).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 32_768
    max_connections: int = 4096
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or networks).
    forwarded_allow_ips: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfiguredPrice:
    """A price from ``[upstream.prices]`` (given in USD per million tokens)."""

    price: Price
    max_completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    name: str = "default"
    kind: str = "openrouter"
    prices: Mapping[str, ConfiguredPrice] = field(default_factory=dict)
    # For an upstream of ``[upstreams.NAME]``: the model ids (or fnmatch patterns) routed
    # to it; the default upstream serves every other model.
    models: tuple[str, ...] = ()
    base_url: str = "https://openrouter.ai/api/v1"
    api_key_env: str = "OPENROUTER_API_KEY"
    api_key: str = ""
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    models_ttl_s: float = 300.0
    max_connections: int = 1000
    transport: str = "aiohttp"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    backend: str = "sqlite"
    path: str = "wattfare.db"
    busy_timeout_ms: int = 5000
    # PostgreSQL: the URL comes from the environment, never the file.
    url_env: str = "WATTFARE_DATABASE_URL"
    url: str = field(default="", repr=False)
    pool_min_size: int = 2
    pool_max_size: int = 10
    # A node whose heartbeat is older than this is dead: the others settle its holds.
    lease_s: float = 20.0


@dataclass(frozen=True, slots=True)
class MeteringSettings:
    default_monthly_nano: int = 10 * NANO_PER_USD
    default_max_tokens: int = 4096
    min_completion_tokens: int = 16
    extend_tokens: int = 256
    checkpoint_interval_s: float = 2.0


@dataclass(frozen=True, slots=True)
class ConsentSettings:
    """End-user accounts and the hosted pages (``[consent]``)."""

    signup_open: bool = True
    default_budget_nano: int = 20 * NANO_PER_USD
    cookie_secret_env: str = "WATTFARE_COOKIE_SECRET"  # noqa: S105 (a variable name)
    # Read from the environment variable above; empty means the gateway generates one
    # and keeps it in its store, so every worker (and a restart) shares it.
    cookie_secret: str = ""
    session_days: int = 14
    signin_attempts_per_email: int = 5
    signin_attempts_per_ip: int = 30
    signup_attempts_per_ip: int = 10
    attempt_window_s: float = 900.0


@dataclass(frozen=True, slots=True)
class FundingSettings:
    """Who pays the upstream (``[funding]``): the operator's key, each person's own
    connected OpenRouter account, or either (see :mod:`gateway.funding`)."""

    modes: tuple[str, ...] = ("operator",)
    # Test-mode apps are paid with the operator's key even where people fund live ones.
    test_apps_operator_funded: bool = True
    openrouter_auth_url: str = "https://openrouter.ai/auth"
    kek_env: str = "WATTFARE_FUNDING_KEK"
    # The key-encryption keys read from that variable, the active one first: (id, key).
    keyring: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    @property
    def user(self) -> bool:
        return "user" in self.modes

    @property
    def operator(self) -> bool:
        return "operator" in self.modes


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = ServerSettings()
    # The default upstream (``[upstream]``) and the named ones (``[upstreams.NAME]``).
    upstream: UpstreamSettings = UpstreamSettings()
    named_upstreams: tuple[UpstreamSettings, ...] = ()
    store: StoreSettings = StoreSettings()
    metering: MeteringSettings = MeteringSettings()
    consent: ConsentSettings = ConsentSettings()
    funding: FundingSettings = FundingSettings()
    source: str = "<defaults>"

    @property
    def upstreams(self) -> tuple[UpstreamSettings, ...]:
        """Every upstream, the default first, then the named ones in file order."""
        return (self.upstream, *self.named_upstreams)


# --- validation helpers: each returns the value or raises with the key's name -------------

def _number(section: str, key: str, value: Any, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{section}.{key}: must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise ConfigError(f"{section}.{key}: must be a number {op} {minimum:g}, got {value!r}")
    return float(value)


def _integer(section: str, key: str, value: Any, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{section}.{key}: must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(
            f"{section}.{key}: must be between {minimum} and {maximum}, got {value!r}"
        )
    return value


def _string(section: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{section}.{key}: must be a non-empty string, got {value!r}")
    return value


def _usd_nano(section: str, key: str, value: Any) -> int:
    """A USD amount as integer nano-USD (the range every USD amount shares)."""
    try:
        return usd_to_nano(value)
    except ValueError as exc:
        raise ConfigError(f"{section}.{key}: {exc}") from None


def _boolean(section: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{section}.{key}: must be true or false, got {value!r}")
    return value


def _http_url(section: str, key: str, value: Any) -> str:
    text = _string(section, key, value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{section}.{key}: must be an http(s) URL, got {value!r}")
    return text.rstrip("/")


def _choice(section: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{section}.{key}: must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _price_entry(section: str, model: str, value: Any) -> ConfiguredPrice:
    where = f"{section}.prices.{model}"
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table like {{ prompt = 0.15, completion = 0.6 }}")
    unknown = sorted(set(value) - {"prompt", "completion", "request", "max_completion_tokens"})
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key")
    for key in ("prompt", "completion"):
        if key not in value:
            raise ConfigError(f"{where}.{key}: missing (USD per million tokens)")
    per_million = {
        key: _number(where, key, value.get(key, 0), minimum=0, strict=False)
        for key in ("prompt", "completion", "request")
    }
    for key, amount in per_million.items():
        if amount > 1e6:
            raise ConfigError(f"{where}.{key}: must be at most 1e6, got {amount!r}")
    limit = value.get("max_completion_tokens")
    return ConfiguredPrice(
        price=Price(
            prompt=pico_per_token_from_per_million(per_million["prompt"]),
            completion=pico_per_token_from_per_million(per_million["completion"]),
            # A per-request price is given in USD per request, not per million.
            request=pico_per_token_from_per_million(per_million["request"] * 1e6),
        ),
        max_completion_tokens=None if limit is None else _integer(
            where, "max_completion_tokens", limit, minimum=1, maximum=10_000_000
        ),
    )


def _upstream(
    section: str, u: Mapping[str, Any], env: Mapping[str, str], *, name: str
) -> UpstreamSettings:
    du = UpstreamSettings()
    kind = _choice(section, "kind", u.get("kind", du.kind), ("openrouter", "openai"))
    key_env = u.get("api_key_env", du.api_key_env)
    if not isinstance(key_env, str):
        raise ConfigError(f"{section}.api_key_env: must be a string, got {key_env!r}")
    prices = u.get("prices", {})
    if not isinstance(prices, dict):
        raise ConfigError(f"{section}.prices: must be a table of model = {{ prompt, completion }}")
    patterns = u.get("models", [])
    if not isinstance(patterns, list) or not all(
        isinstance(p, str) and p.strip() for p in patterns
    ):
        raise ConfigError(f"{section}.models: must be a list of model ids or patterns")
    return UpstreamSettings(
        name=name,
        kind=kind,
        base_url=_http_url(section, "base_url", u.get("base_url", du.base_url)).rstrip("/"),
        api_key_env=key_env,
        api_key=env.get(key_env, "") if key_env else "",
        prices={model: _price_entry(section, model, v) for model, v in prices.items()},
        models=tuple(patterns),
        connect_timeout_s=_number(
            section, "connect_timeout_s", u.get("connect_timeout_s", du.connect_timeout_s),
            minimum=0, strict=True,
        ),
        first_byte_timeout_s=_number(
            section, "first_byte_timeout_s",
            u.get("first_byte_timeout_s", du.first_byte_timeout_s), minimum=0, strict=True,
        ),
        idle_timeout_s=_number(
            section, "idle_timeout_s", u.get("idle_timeout_s", du.idle_timeout_s),
            minimum=0, strict=True,
        ),
        models_ttl_s=_number(
            section, "models_ttl_s", u.get("models_ttl_s", du.models_ttl_s),
            minimum=0, strict=True,
        ),
        max_connections=_integer(
            section, "max_connections", u.get("max_connections", du.max_connections),
            minimum=1, maximum=100_000,
        ),
        transport=_choice(
            section, "transport", u.get("transport", du.transport), ("aiohttp", "httpx")
        ),
    )


def _networks(section: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of IP addresses or networks (``"10.0.0.0/8"``), or ``["*"]`` for any peer."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{section}.{key}: must be a list of IP addresses, got {value!r}")
    for item in value:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigError(
                f"{section}.{key}: {item!r} is not an IP address or network"
            ) from None
    return tuple(value)


_KNOWN: dict[str, set[str]] = {
    "server": {
        "host", "port", "public_url", "max_body_bytes", "access_log", "workers",
        "header_timeout_s", "body_timeout_s", "max_header_bytes", "max_connections",
        "forwarded_allow_ips",
    },
    "upstream": {
        "kind", "base_url", "api_key_env", "prices", "connect_timeout_s", "first_byte_timeout_s",
        "idle_timeout_s", "models_ttl_s", "max_connections", "transport",
    },
    "upstreams": set(),
    "store": {
        "backend", "path", "busy_timeout_ms", "url_env", "pool_min_size", "pool_max_size",
        "lease_s",
    },
    "metering": {
        "default_monthly_usd", "default_max_tokens", "min_completion_tokens",
        "extend_tokens", "checkpoint_interval_s",
    },
    "consent": {
        "signup", "default_budget_usd", "cookie_secret_env", "session_days",
        "signin_attempts_per_email", "signin_attempts_per_ip", "signup_attempts_per_ip",
        "attempt_window_s",
    },
    "funding": {"modes", "test_apps_operator_funded", "openrouter_auth_url", "kek_env"},
}


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: must be a table")
    unknown = sorted(set(table) - _KNOWN[name])
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}: unknown key")
    return table


def _store_settings(st: Mapping[str, Any], env: Mapping[str, str]) -> StoreSettings:
    ds = StoreSettings()
    backend = _choice("store", "backend", st.get("backend", ds.backend), ("sqlite", "postgres"))
    url_env = _string("store", "url_env", st.get("url_env", ds.url_env))
    url = ""
    if backend == "postgres":
        url = env.get(url_env, "")
        if not url:
            raise ConfigError(f"store.url_env: environment variable {url_env} is not set")
        if urlsplit(url).scheme not in ("postgres", "postgresql"):
            raise ConfigError(
                f"store.url_env: {url_env} must be a postgresql:// URL"
            )
    pool_min = _integer("store", "pool_min_size", st.get("pool_min_size", ds.pool_min_size),
                        minimum=1, maximum=1000)
    # One connection is the money writes' own (gateway.store.postgres_batch): at least
    # one more serves everything else.
    pool_max = _integer("store", "pool_max_size", st.get("pool_max_size", ds.pool_max_size),
                        minimum=2, maximum=1000)
    if pool_max < pool_min:
        raise ConfigError(
            f"store.pool_max_size: must be at least pool_min_size ({pool_min}), got {pool_max}"
        )
    return StoreSettings(
        backend=backend,
        path=_string("store", "path", st.get("path", ds.path)),
        busy_timeout_ms=_integer(
            "store", "busy_timeout_ms", st.get("busy_timeout_ms", ds.busy_timeout_ms),
            minimum=0, maximum=600_000,
        ),
        url_env=url_env,
        url=url,
        pool_min_size=pool_min,
        pool_max_size=pool_max,
        lease_s=_number("store", "lease_s", st.get("lease_s", ds.lease_s), minimum=2, strict=False),
    )


def settings_from_mapping(
    raw: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    source: str = "<mapping>",
) -> Settings:
    """Validate a parsed TOML document into :class:`Settings`."""
    env = os.environ if environ is None else environ
    unknown = sorted(set(raw) - set(_KNOWN))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section")

    s = _section(raw, "server")
    d = ServerSettings()
    host = _string("server", "host", s.get("host", d.host))
    port = _integer("server", "port", s.get("port", d.port), minimum=0, maximum=65535)
    public_default = f"http://{host}:{port}" if "public_url" not in s else None
    server = ServerSettings(
        host=host,
        port=port,
        public_url=_http_url("server", "public_url", s.get("public_url", public_default)),
        max_body_bytes=_integer(
            "server", "max_body_bytes", s.get("max_body_bytes", d.max_body_bytes),
            minimum=1024, maximum=64 * 1024 * 1024,
        ),
        access_log=_boolean("server", "access_log", s.get("access_log", d.access_log)),
        workers=_integer("server", "workers", s.get("workers", d.workers), minimum=1, maximum=64),
        header_timeout_s=_number(
            "server", "header_timeout_s", s.get("header_timeout_s", d.header_timeout_s),
            minimum=0, strict=True,
        ),
        body_timeout_s=_number(
            "server", "body_timeout_s", s.get("body_timeout_s", d.body_timeout_s),
            minimum=0, strict=True,
        ),
        max_header_bytes=_integer(
            "server", "max_header_bytes", s.get("max_header_bytes", d.max_header_bytes),
            minimum=1024, maximum=1024 * 1024,
        ),
        max_connections=_integer(
            "server", "max_connections", s.get("max_connections", d.max_connections),
            minimum=1, maximum=1_000_000,
        ),
        forwarded_allow_ips=_networks(
            "server", "forwarded_allow_ips", s.get("forwarded_allow_ips", [])
        ),
    )

    upstream = _upstream("upstream", _section(raw, "upstream"), env, name="default")
    extra = raw.get("upstreams", {})
    if not isinstance(extra, dict):
        raise ConfigError("upstreams: must be a table of named upstreams")
    upstreams = [upstream]
    for name, table in extra.items():
        if not isinstance(table, dict):
            raise ConfigError(f"upstreams.{name}: must be a table")
        if name == "default" or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"upstreams.{name}: a name of letters, digits, '-' and '_'")
        unknown_keys = sorted(set(table) - _KNOWN["upstream"] - {"models"})
        if unknown_keys:
            raise ConfigError(f"upstreams.{name}.{unknown_keys[0]}: unknown key")
        named = _upstream(f"upstreams.{name}", table, env, name=name)
        if not named.models:
            raise ConfigError(
                f"upstreams.{name}.models: must list the model ids (or patterns such as "
                f"'local/*') this upstream serves"
            )
        upstreams.append(named)

    store = _store_settings(_section(raw, "store"), env)

    m = _section(raw, "metering")
    dm = MeteringSettings()
    metering = MeteringSettings(
        default_monthly_nano=_usd_nano(
            "metering", "default_monthly_usd",
            m.get("default_monthly_usd", dm.default_monthly_nano / NANO_PER_USD),
        ),
        default_max_tokens=_integer(
            "metering", "default_max_tokens", m.get("default_max_tokens", dm.default_max_tokens),
            minimum=1, maximum=10_000_000,
        ),
        min_completion_tokens=_integer(
            "metering", "min_completion_tokens",
            m.get("min_completion_tokens", dm.min_completion_tokens), minimum=1, maximum=100_000,
        ),
        extend_tokens=_integer(
            "metering", "extend_tokens", m.get("extend_tokens", dm.extend_tokens),
            minimum=1, maximum=1_000_000,
        ),
        checkpoint_interval_s=_number(
            "metering", "checkpoint_interval_s",
            m.get("checkpoint_interval_s", dm.checkpoint_interval_s), minimum=0, strict=True,
        ),
    )
    return Settings(
        server=server, upstream=upstream, named_upstreams=tuple(upstreams[1:]), store=store,
        metering=metering, consent=_consent(raw, env), funding=_funding(raw, env, upstreams),
        source=source,
    )


def _consent(raw: Mapping[str, Any], env: Mapping[str, str]) -> ConsentSettings:
    c = _section(raw, "consent")
    d = ConsentSettings()
    budget_nano = _usd_nano(
        "consent", "default_budget_usd",
        c.get("default_budget_usd", d.default_budget_nano / NANO_PER_USD),
    )
    secret_env = _string(
        "consent", "cookie_secret_env", c.get("cookie_secret_env", d.cookie_secret_env)
    )
    secret = env.get(secret_env, "")
    if secret and len(secret) < 32:
        raise ConfigError(
            f"consent.cookie_secret_env: ${secret_env} must hold at least 32 characters"
        )
    signup = _choice("consent", "signup", c.get("signup", "open"), ("open", "closed"))
    return ConsentSettings(
        signup_open=signup == "open",
        default_budget_nano=budget_nano,
        cookie_secret_env=secret_env,
        cookie_secret=secret,
        session_days=_integer(
            "consent", "session_days", c.get("session_days", d.session_days),
            minimum=1, maximum=365,
        ),
        signin_attempts_per_email=_integer(
            "consent", "signin_attempts_per_email",
            c.get("signin_attempts_per_email", d.signin_attempts_per_email),
            minimum=1, maximum=1_000_000,
        ),
        signin_attempts_per_ip=_integer(
            "consent", "signin_attempts_per_ip",
            c.get("signin_attempts_per_ip", d.signin_attempts_per_ip),
            minimum=1, maximum=1_000_000,
        ),
        signup_attempts_per_ip=_integer(
            "consent", "signup_attempts_per_ip",
            c.get("signup_attempts_per_ip", d.signup_attempts_per_ip),
            minimum=1, maximum=1_000_000,
        ),
        attempt_window_s=_number(
            "consent", "attempt_window_s", c.get("attempt_window_s", d.attempt_window_s),
            minimum=0, strict=True,
        ),
    )


def parse_keyring(text: str) -> tuple[tuple[str, bytes], ...]:
    """``"id:base64url-key[,id:key…]"`` (the active key first; each key 32 bytes) →
    ``((id, key), …)``; raises ValueError saying what is wrong (never the key)."""
    ring: list[tuple[str, bytes]] = []
    for entry in (part.strip() for part in text.split(",")):
        kid, sep, encoded = entry.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", kid):
            raise ValueError("each entry must be <id>:<base64url key>, id of [A-Za-z0-9_-]")
        try:
            key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, binascii.Error):
            key = b""
        if len(key) != 32:
            raise ValueError(f"key {kid!r} must be 32 bytes, base64url-encoded")
        if any(kid == other for other, _ in ring):
            raise ValueError(f"key id {kid!r} appears twice")
        ring.append((kid, key))
    return tuple(ring)


def _funding(
    raw: Mapping[str, Any], env: Mapping[str, str], upstreams: list[UpstreamSettings]
) -> FundingSettings:
    f = _section(raw, "funding")
    d = FundingSettings()
    modes = f.get("modes", list(d.modes))
    if (
        not isinstance(modes, list) or not modes
        or any(m not in ("operator", "user") for m in modes) or len(set(modes)) != len(modes)
    ):
        raise ConfigError(
            f'funding.modes: must be ["operator"], ["user"] or ["operator", "user"], '
            f"got {modes!r}"
        )
    if "user" in modes and not any(u.kind == "openrouter" for u in upstreams):
        raise ConfigError(
            'funding.modes: "user" needs an upstream of kind "openrouter" (people connect '
            "their OpenRouter accounts)"
        )
    kek_env = _string("funding", "kek_env", f.get("kek_env", d.kek_env))
    keyring: tuple[tuple[str, bytes], ...] = ()
    if env.get(kek_env):
        try:
            keyring = parse_keyring(env[kek_env])
        except ValueError as exc:
            raise ConfigError(f"funding.kek_env: ${kek_env}: {exc}") from None
    elif "user" in modes:
        raise ConfigError(
            f"funding.kek_env: ${kek_env} must hold a key-encryption key when funding.modes "
            "includes \"user\" (make one with 'wattfare funding new-kek')"
        )
    return FundingSettings(
        modes=tuple(sorted(modes)),
        test_apps_operator_funded=_boolean(
            "funding", "test_apps_operator_funded",
            f.get("test_apps_operator_funded", d.test_apps_operator_funded),
        ),
        openrouter_auth_url=_http_url(
            "funding", "openrouter_auth_url",
            f.get("openrouter_auth_url", d.openrouter_auth_url),
        ),
        kek_env=kek_env,
        keyring=keyring,
    )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read ``path`` (else ``$WATTFARE_CONFIG``, else defaults) and validate it.

    A relative ``store.path`` is resolved against the config file's folder, so a
    service started from anywhere finds the same database.
    """
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get("WATTFARE_CONFIG") or None
    if chosen is None:
        return settings_from_mapping({}, environ=env, source="<defaults>")
    file = Path(chosen)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(file)!r}: not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(file)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(file)!r}: invalid TOML: {exc}") from None
    settings = settings_from_mapping(raw, environ=env, source=str(file))
    store_path = Path(settings.store.path)
    if not store_path.is_absolute() and settings.store.path != ":memory:":
        store_path = file.resolve().parent / store_path
        settings = replace(settings, store=replace(settings.store, path=str(store_path)))
    return settings
