"""The SQLite schema, as numbered migrations applied in order at start-up.

A migration is never edited once released: a change to the schema is a new entry.
``PRAGMA user_version`` records the last one applied.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: apps, connections, monthly spend, holds, ledger, revocation events, instances
    """
    CREATE TABLE apps (
        id              TEXT PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        mode            TEXT NOT NULL CHECK (mode IN ('test', 'live')),
        publishable_key TEXT NOT NULL UNIQUE,
        secret_hash     BLOB NOT NULL UNIQUE,
        key_version     INTEGER NOT NULL DEFAULT 1,
        origins         TEXT NOT NULL DEFAULT '[]',
        status          TEXT NOT NULL DEFAULT 'active',
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );
    CREATE TABLE connections (
        app_id     TEXT NOT NULL REFERENCES apps(id),
        user_id    TEXT NOT NULL,
        cap_nano   INTEGER NOT NULL CHECK (cap_nano >= 0),
        status     TEXT NOT NULL CHECK (status IN ('connected', 'revoked')),
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (app_id, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE spend (
        app_id       TEXT NOT NULL,
        user_id      TEXT NOT NULL,
        period       TEXT NOT NULL,
        settled_nano INTEGER NOT NULL DEFAULT 0 CHECK (settled_nano >= 0),
        held_nano    INTEGER NOT NULL DEFAULT 0 CHECK (held_nano >= 0),
        PRIMARY KEY (app_id, user_id, period)
    ) WITHOUT ROWID;
    CREATE TABLE holds (
        id          TEXT PRIMARY KEY,
        request_id  TEXT NOT NULL,
        app_id      TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        period      TEXT NOT NULL,
        model       TEXT NOT NULL,
        amount_nano INTEGER NOT NULL CHECK (amount_nano >= 0),
        used_nano   INTEGER NOT NULL DEFAULT 0 CHECK (used_nano >= 0),
        instance_id TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX holds_instance ON holds (instance_id);
    CREATE TABLE ledger (
        id                 INTEGER PRIMARY KEY,
        request_id         TEXT NOT NULL UNIQUE,
        app_id             TEXT NOT NULL,
        user_id            TEXT NOT NULL,
        period             TEXT NOT NULL,
        model              TEXT NOT NULL,
        prompt_tokens      INTEGER NOT NULL,
        completion_tokens  INTEGER NOT NULL,
        cost_nano          INTEGER NOT NULL CHECK (cost_nano >= 0),
        upstream_cost_nano INTEGER NOT NULL CHECK (upstream_cost_nano >= 0),
        operator_nano      INTEGER NOT NULL CHECK (operator_nano >= 0),
        cost_source        TEXT NOT NULL,
        status             TEXT NOT NULL,
        http_status        INTEGER NOT NULL,
        error_code         TEXT,
        ttfb_ms            REAL,
        duration_ms        REAL NOT NULL,
        generation_id      TEXT,
        created_at         INTEGER NOT NULL
    );
    CREATE INDEX ledger_connection ON ledger (app_id, user_id, created_at);
    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        kind       TEXT NOT NULL,
        app_id     TEXT NOT NULL,
        user_id    TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE instances (
        id           TEXT PRIMARY KEY,
        pid          INTEGER NOT NULL,
        host         TEXT NOT NULL,
        proc_start   TEXT NOT NULL DEFAULT '',
        started_at   INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL
    );
    """,
    # 2: end-user accounts and their monthly budgets, browser sessions, one-time consent
    # links, and a secret the gateway generates for itself (cookie signing). A connection
    # may belong to an account; a hold and a ledger row remember the account they charge,
    # so a connection that changes hands never moves money between accounts.
    """
    CREATE TABLE accounts (
        id            TEXT PRIMARY KEY,
        email         TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        budget_nano   INTEGER NOT NULL CHECK (budget_nano >= 0),
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL
    );
    CREATE TABLE account_spend (
        account_id   TEXT NOT NULL,
        period       TEXT NOT NULL,
        settled_nano INTEGER NOT NULL DEFAULT 0 CHECK (settled_nano >= 0),
        held_nano    INTEGER NOT NULL DEFAULT 0 CHECK (held_nano >= 0),
        PRIMARY KEY (account_id, period)
    ) WITHOUT ROWID;
    ALTER TABLE connections ADD COLUMN account_id TEXT REFERENCES accounts(id);
    CREATE INDEX connections_account ON connections (account_id);
    ALTER TABLE holds ADD COLUMN account_id TEXT;
    ALTER TABLE ledger ADD COLUMN account_id TEXT;
    CREATE INDEX ledger_account ON ledger (account_id, created_at);
    CREATE TABLE web_sessions (
        token_hash BLOB PRIMARY KEY,
        account_id TEXT NOT NULL REFERENCES accounts(id),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX web_sessions_account ON web_sessions (account_id);
    CREATE TABLE consents (
        id_hash    BLOB PRIMARY KEY,
        app_id     TEXT NOT NULL REFERENCES apps(id),
        user_id    TEXT NOT NULL,
        cap_nano   INTEGER NOT NULL CHECK (cap_nano >= 0),
        origin     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at    INTEGER,
        outcome    TEXT
    );
    CREATE TABLE secrets (
        name       TEXT PRIMARY KEY,
        value      BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    """,
    # 3: the upstream's generation id kept with its hold as soon as it is known; a finished
    # request whose cost awaits the upstream's record keeps its hold, with the settlement
    # to fall back on and when its next look-up is due; who paid the upstream.
    """
    ALTER TABLE holds ADD COLUMN generation_id TEXT;
    ALTER TABLE holds ADD COLUMN settlement TEXT;
    ALTER TABLE holds ADD COLUMN due_at REAL;
    ALTER TABLE holds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX holds_due ON holds (due_at) WHERE settlement IS NOT NULL;
    ALTER TABLE ledger ADD COLUMN funded_by TEXT NOT NULL DEFAULT 'operator';
    """,
    # 4: people's own funding sources (the upstream key sealed: see gateway.funding.vault)
    # and the connect attempts under way.
    """
    CREATE TABLE funding_sources (
        id          TEXT PRIMARY KEY,
        account_id  TEXT NOT NULL UNIQUE REFERENCES accounts(id),
        provider    TEXT NOT NULL,
        label       TEXT NOT NULL,
        kek_id      TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        ciphertext  BLOB NOT NULL,
        created_at  INTEGER NOT NULL,
        problem     TEXT,
        problem_at  INTEGER
    );
    CREATE TABLE funding_attempts (
        state_hash    BLOB PRIMARY KEY,
        session_hash  BLOB NOT NULL,
        account_id    TEXT NOT NULL REFERENCES accounts(id),
        provider      TEXT NOT NULL,
        verifier_hash BLOB NOT NULL,
        return_to     TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL
    );
    """,
    # 5: the operator can disable an end user's account.
    """
    ALTER TABLE accounts ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'disabled'))
    """,
    # 6: a hold records who funds it, so that whoever settles or looks it up after its
    # process is gone books it to the same funder and asks the upstream with that
    # funder's key. A hold already deferred knows it from its stored settlement.
    """
    ALTER TABLE holds ADD COLUMN funded_by TEXT NOT NULL DEFAULT 'operator';
    UPDATE holds SET funded_by = json_extract(settlement, '$.funded_by')
        WHERE settlement IS NOT NULL AND json_valid(settlement)
        AND json_type(settlement, '$.funded_by') = 'text';
    """,
)
