//! The user cache of enrichment (`user_cache`): who a source's users are,
//! and which ids its API does not know, each until an expiry.
//!
//! Names and emails are personal data, not credentials: they may be
//! stored. Nothing else about a user is.

use rusqlite::params;

use super::{StateDb, StateError};

/// What the cache knows about one user id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CachedUserStatus {
    /// The API knows the user.
    Found {
        name: Option<String>,
        email: Option<String>,
    },
    /// The API has no such user (404, deleted, never a user).
    Unknown,
}

/// One row of the user cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedUser {
    pub user_id: String,
    pub status: CachedUserStatus,
    /// When it was fetched (unix ms).
    pub fetched_at: i64,
    /// When it must be fetched again (unix ms).
    pub expires_at: i64,
}

impl StateDb {
    /// The cached rows of `user_ids` for a source, expired ones included
    /// (the caller decides what is fresh). Ids without a row are absent.
    pub fn cached_users(
        &self,
        source_id: &str,
        user_ids: &[String],
    ) -> Result<Vec<CachedUser>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT status, name, email, fetched_at, expires_at FROM user_cache
             WHERE source_id = ?1 AND user_id = ?2",
        )?;
        let mut found = Vec::new();
        for user_id in user_ids {
            let mut rows = stmt.query(params![source_id, user_id])?;
            if let Some(row) = rows.next()? {
                let status: String = row.get(0)?;
                found.push(CachedUser {
                    user_id: user_id.clone(),
                    status: if status == "found" {
                        CachedUserStatus::Found {
                            name: row.get(1)?,
                            email: row.get(2)?,
                        }
                    } else {
                        CachedUserStatus::Unknown
                    },
                    fetched_at: row.get(3)?,
                    expires_at: row.get(4)?,
                });
            }
        }
        Ok(found)
    }

    /// Stores (or replaces) rows of a source's user cache, in one
    /// transaction.
    pub fn cache_users(&mut self, source_id: &str, users: &[CachedUser]) -> Result<(), StateError> {
        if users.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO user_cache (source_id, user_id, status, name, email, fetched_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (source_id, user_id) DO UPDATE SET status = excluded.status,
                     name = excluded.name, email = excluded.email,
                     fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
            )?;
            for user in users {
                let (status, name, email) = match &user.status {
                    CachedUserStatus::Found { name, email } => {
                        ("found", name.as_deref(), email.as_deref())
                    }
                    CachedUserStatus::Unknown => ("unknown", None, None),
                };
                stmt.execute(params![
                    source_id,
                    user.user_id,
                    status,
                    name,
                    email,
                    user.fetched_at,
                    user.expires_at
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes every source's rows that expired before `now_ms` (they would
    /// be fetched again anyway). Returns how many.
    pub fn prune_user_cache(&mut self, now_ms: i64) -> Result<u64, StateError> {
        let deleted = self
            .conn
            .execute("DELETE FROM user_cache WHERE expires_at <= ?1", [now_ms])?;
        Ok(deleted as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, status: CachedUserStatus, expires_at: i64) -> CachedUser {
        CachedUser {
            user_id: id.to_string(),
            status,
            fetched_at: 1,
            expires_at,
        }
    }

    #[test]
    fn user_cache_round_trips_replaces_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("state.db")).unwrap();
        let ada = CachedUserStatus::Found {
            name: Some("Ada".into()),
            email: Some("ada@example.com".into()),
        };
        db.cache_users(
            "a",
            &[
                user("1", ada.clone(), 100),
                user("2", CachedUserStatus::Unknown, 50),
            ],
        )
        .unwrap();
        db.cache_users("b", &[user("1", CachedUserStatus::Unknown, 100)])
            .unwrap();
        let ids = ["1".to_string(), "2".to_string(), "3".to_string()];
        let rows = db.cached_users("a", &ids).unwrap();
        assert_eq!(
            rows,
            vec![
                user("1", ada, 100),
                user("2", CachedUserStatus::Unknown, 50)
            ]
        );
        // Sources are kept apart, and a new row replaces the old one.
        db.cache_users("a", &[user("1", CachedUserStatus::Unknown, 200)])
            .unwrap();
        assert_eq!(
            db.cached_users("a", &ids[..1]).unwrap(),
            vec![user("1", CachedUserStatus::Unknown, 200)]
        );
        assert_eq!(db.cached_users("b", &ids).unwrap().len(), 1);
        assert_eq!(db.prune_user_cache(100).unwrap(), 2);
        assert_eq!(db.cached_users("a", &ids).unwrap().len(), 1);
        assert!(db.cached_users("b", &ids).unwrap().is_empty());
    }
}
