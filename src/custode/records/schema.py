"""The history database's schema: an append-only list of SQL migrations.

``PRAGMA user_version`` counts the migrations a database has had; ``StateDB.open`` applies
the rest, each in its own ``BEGIN IMMEDIATE`` transaction that re-reads the version, so
racing processes apply each once. Never edit a migration that has shipped; add a new one.
"""

# Append only: never edit a migration that has shipped; add a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY, command TEXT NOT NULL, host TEXT NOT NULL,
        started_at TEXT NOT NULL, finished_at TEXT,
        status TEXT NOT NULL DEFAULT 'running', summary TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX runs_command_started ON runs (command, started_at);
    CREATE TABLE repository_results (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        repository TEXT NOT NULL, root TEXT NOT NULL, task TEXT NOT NULL,
        outcome TEXT NOT NULL, started_at TEXT NOT NULL, duration_s REAL NOT NULL,
        details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX repository_results_run ON repository_results (run_id);
    CREATE INDEX repository_results_repo ON repository_results (repository, started_at);
    CREATE TABLE observations (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        repository TEXT NOT NULL, root TEXT NOT NULL, verdict TEXT NOT NULL,
        loose_objects INTEGER NOT NULL, loose_objects_bytes INTEGER NOT NULL,
        packs INTEGER NOT NULL, pack_bytes INTEGER NOT NULL, loose_refs INTEGER NOT NULL,
        size_bytes INTEGER NOT NULL, fingerprint TEXT NOT NULL, observed_at TEXT NOT NULL
    );
    CREATE INDEX observations_run ON observations (run_id);
    CREATE INDEX observations_repo ON observations (repository, observed_at);
    """,
    """
    CREATE INDEX observations_latest ON observations (root, repository, id);
    CREATE INDEX runs_started ON runs (started_at);
    """,
    """
    CREATE INDEX repository_results_task ON repository_results (task, root, repository, started_at);
    """,
    """
    CREATE TABLE host_samples (
        id INTEGER PRIMARY KEY, taken_at TEXT NOT NULL, cpu_ratio REAL NOT NULL,
        memory_ratio REAL NOT NULL, load1 REAL NOT NULL
    );
    CREATE INDEX host_samples_taken ON host_samples (taken_at);
    """,
    """
    CREATE TABLE alert_events (
        id INTEGER PRIMARY KEY, at TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
        severity TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL
    );
    CREATE INDEX alert_events_at ON alert_events (at);
    """,
    """
    ALTER TABLE observations ADD COLUMN reasons TEXT NOT NULL DEFAULT '';
    """,
    """
    CREATE TABLE borrowers (
        lender TEXT NOT NULL, borrower TEXT NOT NULL,
        first_seen TEXT NOT NULL, last_seen TEXT NOT NULL,
        PRIMARY KEY (lender, borrower)
    );
    """,
    """
    CREATE TABLE audit_anchor (
        log TEXT PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL, at TEXT NOT NULL
    );
    """,
    # what each repository's last sound check proved (custode.integrity.verified): one row
    # per repository, replaced, so that a record of thousands of tips is not kept nightly
    """
    CREATE TABLE check_records (
        root TEXT NOT NULL, repository TEXT NOT NULL, recorded_at TEXT NOT NULL,
        record TEXT NOT NULL, PRIMARY KEY (root, repository)
    );
    """,
)
