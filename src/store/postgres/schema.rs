//! The schema, as numbered migrations applied in order at start-up, and the time
//! partitions of the history tables.
//!
//! Migrations run under a session advisory lock, each in its own transaction with its
//! row in `mailgate_migrations`: two nodes starting at once apply each migration once
//! (the second waits, then finds it applied). A migration is never edited once
//! released; a change is a new one.
//!
//! History (`messages`, `events`, `webhook_attempts`, `reports`) is partitioned by day,
//! so retention drops a day's partition instead of deleting its rows one by one (which
//! leaves work for vacuum). Messages are partitioned by their id: ids are UUIDv7, so an
//! id's first 48 bits are its creation time in milliseconds and a lookup by id reads
//! one partition. A `default` partition catches rows of days without a partition of
//! their own (say, a clock far off), so an insert never fails for want of one.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use postgres::Client;

use crate::store::StoreError;

/// Taken by every node while it migrates or changes partitions.
const SCHEMA_LOCK: i64 = 0x6d61_696c_6761_7465;

/// Every migration, in order; the position is the version (from 1).
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE nodes (
    node text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE lease_tokens;
CREATE TABLE messages (
    id text COLLATE "C" NOT NULL,
    tenant text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    mime bytea,
    published int NOT NULL DEFAULT 0,
    PRIMARY KEY (id)
) PARTITION BY RANGE (id);
CREATE TABLE messages_default PARTITION OF messages DEFAULT;
CREATE INDEX messages_by_tenant ON messages (tenant, id);
CREATE INDEX messages_with_mime ON messages (id) WHERE mime IS NOT NULL;
CREATE TABLE queue (
    id text COLLATE "C" PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL,
    due_at timestamptz NOT NULL,
    state text NOT NULL,
    node text,
    token bigint
);
CREATE INDEX queue_due ON queue (due_at) WHERE node IS NULL;
CREATE INDEX queue_leased ON queue (node) WHERE node IS NOT NULL;
CREATE TABLE parked (id text PRIMARY KEY, reason text NOT NULL, parked_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE events (
    tenant text COLLATE "C" NOT NULL,
    pos bigint NOT NULL,
    id text COLLATE "C" NOT NULL,
    event_type text NOT NULL,
    day date NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant, pos, day)
) PARTITION BY RANGE (day);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_by_id ON events (id);
CREATE TABLE outbox (
    entry_id text COLLATE "C" PRIMARY KEY,
    due_at timestamptz NOT NULL,
    body bytea NOT NULL
);
CREATE INDEX outbox_due ON outbox (due_at);
CREATE TABLE webhook_attempts (
    webhook_id text COLLATE "C" NOT NULL,
    seq bigserial,
    day date NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (webhook_id, seq, day)
) PARTITION BY RANGE (day);
CREATE TABLE webhook_attempts_default PARTITION OF webhook_attempts DEFAULT;
CREATE TABLE reports (
    tenant text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    day date NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant, id, day)
) PARTITION BY RANGE (day);
CREATE TABLE reports_default PARTITION OF reports DEFAULT;
CREATE TABLE idempotency (
    tenant text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    created_at timestamptz NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE TABLE suppressions (
    tenant text COLLATE "C" NOT NULL,
    email text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, email)
);
CREATE TABLE templates (
    tenant text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name)
);
CREATE TABLE template_versions (
    template_id text COLLATE "C" NOT NULL,
    version int NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (template_id, version)
);
CREATE TABLE webhooks (
    tenant text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE domains (
    tenant text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, name)
);
CREATE TABLE secrets (name text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE revocations (jti text PRIMARY KEY, until bigint NOT NULL);
CREATE TABLE stats_rows (key bytea PRIMARY KEY, slot int NOT NULL, tally bytea NOT NULL);
CREATE INDEX stats_rows_by_slot ON stats_rows (slot);
CREATE TABLE stats_journal (id bigserial PRIMARY KEY, delta bytea NOT NULL);
"#];

/// Applies the migrations this database lacks.
pub(super) fn migrate(client: &mut Client) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])?;
    let migrated = apply_missing(client);
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK]);
    migrated?;
    unlocked?;
    Ok(())
}

fn apply_missing(client: &mut Client) -> Result<(), StoreError> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS mailgate_migrations (
            version int PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let applied: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM mailgate_migrations", &[])?
        .get(0);
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if applied > known {
        return Err(StoreError::Engine(format!(
            "the database schema is at version {applied}, newer than this mailgate knows ({known}): \
             run the newer mailgate, or restore a backup"
        )));
    }
    for (version, sql) in (1..).zip(MIGRATIONS).skip(usize::try_from(applied).unwrap_or(0)) {
        let mut tx = client.transaction()?;
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO mailgate_migrations (version) VALUES ($1)", &[&version])?;
        tx.commit()?;
        tracing::info!(version, "applied a database migration");
    }
    Ok(())
}

/// The tables partitioned by `day`.
const DAY_PARTITIONED: [&str; 3] = ["events", "webhook_attempts", "reports"];

/// The smallest message id made at `at` (see the module comment).
pub(super) fn message_id_at(at: DateTime<Utc>) -> String {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    format!("msg_{millis:012x}{:020}", 0)
}

fn day_start(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc()
}

/// Creates the partitions of yesterday to `days_ahead` days from now that do not exist
/// yet. A day whose rows already went to the default partition keeps them there (the
/// partition cannot be created over them); retention deletes them row by row.
pub(super) fn ensure_partitions(client: &mut Client, now: DateTime<Utc>, days_ahead: i64) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])?;
    for offset in -1..=days_ahead {
        let day = (now + Duration::days(offset)).date_naive();
        let next = day + Duration::days(1);
        let suffix = day.format("%Y%m%d");
        let mut statements = vec![format!(
            "CREATE TABLE IF NOT EXISTS messages_p{suffix} PARTITION OF messages \
             FOR VALUES FROM ('{}') TO ('{}')",
            message_id_at(day_start(day)),
            message_id_at(day_start(next))
        )];
        for table in DAY_PARTITIONED {
            statements.push(format!(
                "CREATE TABLE IF NOT EXISTS {table}_p{suffix} PARTITION OF {table} \
                 FOR VALUES FROM ('{day}') TO ('{next}')"
            ));
        }
        for statement in statements {
            // Only this statement fails (the lock is a session's, not a transaction's).
            if let Err(err) = client.batch_execute(&statement) {
                tracing::warn!(error = %err, statement, "could not create a partition; its rows stay in the default one");
            }
        }
    }
    client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])?;
    Ok(())
}

/// A partition of one day, as listed by [`partitions`].
pub(super) struct Partition {
    pub name: String,
    pub day: NaiveDate,
}

/// The day partitions of `table` (not the default one), oldest first.
pub(super) fn partitions(client: &mut Client, table: &str) -> Result<Vec<Partition>, StoreError> {
    let rows = client.query(
        "SELECT c.relname FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relname = $1 AND p.relnamespace = to_regnamespace(current_schema())::oid
          ORDER BY c.relname",
        &[&table],
    )?;
    let prefix = format!("{table}_p");
    Ok(rows
        .iter()
        .filter_map(|row| {
            let name: String = row.get(0);
            let day = NaiveDate::parse_from_str(name.strip_prefix(&prefix)?, "%Y%m%d").ok()?;
            Some(Partition { name, day })
        })
        .collect())
}

/// Drops one partition (a day of history).
pub(super) fn drop_partition(client: &mut Client, name: &str) -> Result<(), StoreError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])?;
    let dropped = client.batch_execute(&format!("DROP TABLE IF EXISTS \"{name}\""));
    client.execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])?;
    dropped?;
    tracing::info!(partition = name, "retention dropped a day of history");
    Ok(())
}

/// The id bounds of a day's messages partition.
pub(super) fn message_ids_of(day: NaiveDate) -> (String, String) {
    (
        message_id_at(day_start(day)),
        message_id_at(day_start(day + Duration::days(1))),
    )
}
