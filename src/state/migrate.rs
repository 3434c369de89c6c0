//! Schema migrations: the numbered SQL files of `migrations/`, embedded.

use rusqlite::{params, Connection, OptionalExtension};

use super::{unix_ms_now, StateError};

/// One numbered migration file.
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// Every migration this binary knows, in order. A test checks that this list
/// matches the files in `migrations/`.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_init.sql",
        sql: include_str!("../../migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "0002_dead_letter.sql",
        sql: include_str!("../../migrations/0002_dead_letter.sql"),
    },
    Migration {
        version: 3,
        name: "0003_health.sql",
        sql: include_str!("../../migrations/0003_health.sql"),
    },
    Migration {
        version: 4,
        name: "0004_user_cache.sql",
        sql: include_str!("../../migrations/0004_user_cache.sql"),
    },
    Migration {
        version: 5,
        name: "0005_backfill.sql",
        sql: include_str!("../../migrations/0005_backfill.sql"),
    },
    Migration {
        version: 6,
        name: "0006_outbox_rows.sql",
        sql: include_str!("../../migrations/0006_outbox_rows.sql"),
    },
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Brings the schema up to [`SCHEMA_VERSION`], refusing a database written by
/// a newer binary. Returns the version found before migrating.
pub(super) fn migrate(conn: &mut Connection) -> Result<i64, StateError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// [`migrate`], stopping at `target`: tests build a file as an older
/// binary left it.
pub(super) fn migrate_to(conn: &mut Connection, target: i64) -> Result<i64, StateError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at INTEGER NOT NULL
         );",
    )?;
    let found = applied_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StateError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > found && m.version <= target)
    {
        let tx = conn.transaction()?;
        tx.execute_batch(migration.sql)
            .map_err(|cause| StateError::Migration {
                name: migration.name,
                cause,
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![migration.version, migration.name, unix_ms_now()],
        )?;
        tx.pragma_update(None, "user_version", migration.version)?;
        tx.commit()?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applied state migration"
        );
    }
    Ok(found)
}

/// The newest migration recorded in the file (0 for an empty file).
pub(super) fn applied_version(conn: &Connection) -> Result<i64, StateError> {
    let exists: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
        [],
        |row| row.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    Ok(conn
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |row| {
            row.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten()
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_the_migrations_directory() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, embedded);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i64 + 1, "versions are 1, 2, 3, …");
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }
}
