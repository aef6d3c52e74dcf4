//! The SQLite schema migrations, embedded in the binary. Forward-only, one change a file; the
//! test below keeps this list and `migrations/sqlite/` in step.

use std::borrow::Cow;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::SqlStr;

/// (version, description, SQL) of every file in `migrations/sqlite/`, in order.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "jobs", include_str!("../../migrations/sqlite/0001_jobs.sql")),
    (2, "job events", include_str!("../../migrations/sqlite/0002_job_events.sql")),
    (3, "idempotency keys", include_str!("../../migrations/sqlite/0003_idempotency_keys.sql")),
    (4, "attention stats", include_str!("../../migrations/sqlite/0004_attention_stats.sql")),
    (5, "uploads", include_str!("../../migrations/sqlite/0005_uploads.sql")),
    (6, "webhook deliveries", include_str!("../../migrations/sqlite/0006_webhook_deliveries.sql")),
];

pub fn sqlite_migrator() -> Migrator {
    let migrations = SQLITE_MIGRATIONS
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, SqlStr::from_static(sql), false)
        })
        .collect();
    Migrator::with_migrations(migrations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), SQLITE_MIGRATIONS.len(), "files: {files:?}");
        for (file, &(version, _, sql)) in files.iter().zip(SQLITE_MIGRATIONS) {
            let file_version: i64 = file.split('_').next().unwrap().parse().unwrap();
            assert_eq!(file_version, version, "{file}");
            assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), sql, "{file}");
        }
    }
}
