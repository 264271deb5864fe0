"""The sealed funding keys: envelope encryption, its binding to a record, KEK rotation,
and the ``[funding]`` settings that feed it."""

from __future__ import annotations

import dataclasses

import pytest

from gateway.config import ConfigError, parse_keyring, settings_from_mapping
from gateway.consent.signing import Signer
from gateway.funding.pkce import challenge_of, verifier_for
from gateway.funding.vault import Sealed, Vault, VaultError, new_kek

SECRET = "sk-or-v1-" + "ab" * 32


def ring(*entries: str) -> tuple[tuple[str, bytes], ...]:
    return parse_keyring(",".join(entries))


def test_seal_and_open() -> None:
    vault = Vault(ring(new_kek("k1")))
    sealed = vault.seal(SECRET, record="fs_1\x00acct_1")
    assert sealed.kek_id == "k1"
    assert SECRET.encode() not in sealed.ciphertext + sealed.wrapped_key
    assert vault.open(sealed, record="fs_1\x00acct_1") == SECRET
    # A fresh data key and nonces every time.
    again = vault.seal(SECRET, record="fs_1\x00acct_1")
    assert again.ciphertext != sealed.ciphertext and again.wrapped_key != sealed.wrapped_key


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: s, id="another-record"),
        pytest.param(
            lambda s: dataclasses.replace(s, ciphertext=s.ciphertext[:-1] + b"\x00"),
            id="ciphertext-flipped",
        ),
        pytest.param(
            lambda s: dataclasses.replace(s, wrapped_key=bytes(12) + s.wrapped_key[12:]),
            id="wrapped-key-nonce-changed",
        ),
    ],
)
def test_a_moved_or_tampered_record_does_not_open(change: object) -> None:
    vault = Vault(ring(new_kek("k1")))
    sealed = vault.seal(SECRET, record="fs_1\x00acct_1")
    assert callable(change)
    tampered = change(sealed)
    assert isinstance(tampered, Sealed)
    record = "fs_1\x00acct_2" if tampered is sealed else "fs_1\x00acct_1"
    with pytest.raises(VaultError):
        vault.open(tampered, record=record)


def test_another_kek_cannot_open() -> None:
    sealed = Vault(ring(new_kek("k1"))).seal(SECRET, record="r")
    with pytest.raises(VaultError, match="does not open"):
        Vault(ring(new_kek("k1"))).open(sealed, record="r")
    with pytest.raises(VaultError, match="no key-encryption key with id 'k1'"):
        Vault(ring(new_kek("k2"))).open(sealed, record="r")


def test_rotation_rewraps_the_data_key_only() -> None:
    old, new = new_kek("k1"), new_kek("k2")
    sealed = Vault(ring(old)).seal(SECRET, record="r")
    both = Vault(ring(new, old))
    assert both.open(sealed, record="r") == SECRET  # the old id still opens meanwhile
    rewrapped = both.rewrap(sealed, record="r")
    assert rewrapped.kek_id == "k2" and rewrapped.ciphertext == sealed.ciphertext
    assert Vault(ring(new)).open(rewrapped, record="r") == SECRET


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("nokeyid", "each entry must be", id="no-id"),
        pytest.param("k1:c2hvcnQ", "must be 32 bytes", id="short"),
        pytest.param("k1:!!!", "must be 32 bytes", id="not-base64"),
        pytest.param(f"{new_kek('k1')},{new_kek('k1')}", "appears twice", id="duplicate-id"),
    ],
)
def test_bad_keyrings_name_the_problem_not_the_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        settings_from_mapping(
            {"funding": {"modes": ["user"]}}, environ={"WATTFARE_FUNDING_KEK": value}
        )
    assert str(caught.value).startswith("funding.kek_env: $WATTFARE_FUNDING_KEK: ")
    assert value.partition(":")[2] not in str(caught.value) or ":" not in value


def test_user_mode_needs_a_kek() -> None:
    with pytest.raises(ConfigError, match=r"funding.kek_env: \$WATTFARE_FUNDING_KEK must hold"):
        settings_from_mapping({"funding": {"modes": ["operator", "user"]}}, environ={})


@pytest.mark.parametrize(
    "modes",
    [
        pytest.param([], id="empty"),
        pytest.param(["people"], id="unknown"),
        pytest.param(["user", "user"], id="twice"),
        pytest.param("user", id="not-a-list"),
    ],
)
def test_bad_modes(modes: object) -> None:
    with pytest.raises(ConfigError, match=r"^funding\.modes: must be"):
        settings_from_mapping({"funding": {"modes": modes}}, environ={})


def test_funding_defaults_and_the_keyring_stays_out_of_repr() -> None:
    kek = new_kek("main")
    settings = settings_from_mapping(
        {"funding": {"modes": ["user", "operator"]}}, environ={"WATTFARE_FUNDING_KEK": kek}
    )
    funding = settings.funding
    assert funding.modes == ("operator", "user") and funding.user and funding.operator
    assert funding.openrouter_auth_url == "https://openrouter.ai/auth"
    assert funding.test_apps_operator_funded is True
    assert funding.keyring[0][0] == "main"
    assert kek.partition(":")[2] not in repr(settings)
    assert settings_from_mapping({}, environ={}).funding.modes == ("operator",)


def test_new_kek_ids_are_checked() -> None:
    with pytest.raises(ValueError, match="key id"):
        new_kek("has space")


def test_pkce_verifier_is_bound_to_state_and_session() -> None:
    signer = Signer(b"s" * 32)
    verifier = verifier_for(signer, state="st", session_id="sid")
    assert len(verifier) == 43
    assert verifier != verifier_for(signer, state="st", session_id="other")
    assert verifier != verifier_for(signer, state="other", session_id="sid")
    # RFC 7636 appendix B's example.
    assert challenge_of("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == (
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    )
