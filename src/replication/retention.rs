//! The retention cursors a leader registers for its followers
//! (`replica-<follower id>`), and their expiry.
//!
//! A follower's cursor holds back WAL truncation (up to
//! `wal_retention_bytes_max`) and tombstone GC for as long as it is
//! registered, so the cursor of a follower that never comes back would
//! hold tombstones forever. The leader forgets it once the follower has
//! been away for `follower_cursor_horizon_ms`: away since its last session
//! ended, or, for a cursor this server found registered when it started
//! (from an earlier server on the same database), since the cursor was
//! last set (kept with the cursor, so restarts do not reset it; written
//! lazily, so it can be older than the last contact by the time between
//! two compactions, never newer). A follower that
//! comes back later catches up from the WAL if the segments it needs are
//! still there, and gets a snapshot otherwise.
//!
//! Cursors are registered, listed and removed through the database
//! (`Db::set_cursor`, `Db::cursor_names`, `Db::remove_cursor`); how they
//! are kept is its business.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::db::Db;

/// Prefix of the retention cursor names of followers.
const CURSOR_PREFIX: &str = "replica-";

/// The retention cursor name of a follower.
pub(crate) fn cursor_name(follower_id: u64) -> String {
    format!("{CURSOR_PREFIX}{follower_id:016x}")
}

/// The follower a retention cursor name stands for, if it is one.
fn follower_of(cursor_name: &str) -> Option<u64> {
    let hex = cursor_name.strip_prefix(CURSOR_PREFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The followers whose cursors have outlived `horizon_ms`: not connected
/// now, and last in contact `horizon_ms` or more before `now_ms`. Sorted.
pub(crate) fn expired_followers(
    last_contact_ms: &HashMap<u64, u64>,
    is_connected: impl Fn(u64) -> bool,
    now_ms: u64,
    horizon_ms: u64,
) -> Vec<u64> {
    let mut expired: Vec<u64> = last_contact_ms
        .iter()
        .filter(|&(&id, &contact_ms)| {
            !is_connected(id) && now_ms.saturating_sub(contact_ms) >= horizon_ms
        })
        .map(|(&id, _)| id)
        .collect();
    expired.sort_unstable();
    expired
}

/// The followers this leader holds a cursor for, and when each was last in
/// contact.
pub(crate) struct FollowerRegistry {
    db: Db,
    /// Follower id → wall time of the last contact (ms). Held across
    /// setting or removing the cursor, so the two stay in step.
    last_contact_ms: Mutex<HashMap<u64, u64>>,
}

impl FollowerRegistry {
    /// The registry of `db`'s leader: every follower cursor registered now
    /// (by an earlier server on this database), each last in contact when
    /// its cursor was last set (kept with the cursor), or now (this
    /// server's start) for a cursor kept without that time.
    pub fn load(db: &Db) -> FollowerRegistry {
        let now_ms = db.wall_now_ms();
        let contacts = db
            .cursor_names()
            .iter()
            .filter_map(|name| {
                let id = follower_of(name)?;
                let touched_ms = db.cursor(name).map_or(0, |c| c.touched_ms);
                Some((
                    id,
                    if touched_ms > 0 {
                        touched_ms.min(now_ms)
                    } else {
                        now_ms
                    },
                ))
            })
            .collect();
        FollowerRegistry {
            db: db.clone(),
            last_contact_ms: Mutex::new(contacts),
        }
    }

    /// Moves follower `follower_id`'s cursor to `seq`, registering it the
    /// first time. False if the cursor could not be set (the cursor limit).
    pub fn hold(&self, follower_id: u64, seq: u64) -> bool {
        let mut contacts = self.last_contact_ms.lock();
        if self.db.set_cursor(&cursor_name(follower_id), seq).is_err() {
            return false;
        }
        let now_ms = self.db.wall_now_ms();
        contacts.entry(follower_id).or_insert(now_ms);
        true
    }

    /// A session of `follower_id` ended: its horizon counts from now. Call
    /// under the lock that says who is connected, so the expiry never sees
    /// it disconnected with an older contact.
    pub fn session_ended(&self, follower_id: u64) {
        let now_ms = self.db.wall_now_ms();
        if let Some(contact) = self.last_contact_ms.lock().get_mut(&follower_id) {
            *contact = now_ms;
        }
    }

    /// Removes the cursors of followers away for `horizon_ms` or more;
    /// `connected` is the server's map of connected followers (locked
    /// first, so none connects or leaves during the decision). Returns the
    /// ids forgotten.
    pub fn expire<T>(&self, connected: &Mutex<HashMap<u64, T>>, horizon_ms: u64) -> Vec<u64> {
        let connected = connected.lock();
        let mut contacts = self.last_contact_ms.lock();
        let expired = expired_followers(
            &contacts,
            |id| connected.contains_key(&id),
            self.db.wall_now_ms(),
            horizon_ms,
        );
        // A removal that fails (the cursor file could not be written) is
        // tried again at the next check.
        let expired: Vec<u64> = expired
            .into_iter()
            .filter(|id| self.db.remove_cursor(&cursor_name(*id)).is_ok())
            .collect();
        for id in &expired {
            contacts.remove(id);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_followers_away_for_the_horizon_and_not_connected_expire() {
        let contacts: HashMap<u64, u64> = [(1, 1_000), (2, 5_000), (3, 0), (4, 9_000)].into();
        let connected = |id| id == 3;
        assert_eq!(
            expired_followers(&contacts, connected, 10_000, 5_000),
            vec![1, 2],
            "exactly the horizon counts; a connected follower never expires"
        );
        assert_eq!(
            expired_followers(&contacts, connected, 10_000, 10_001),
            Vec::<u64>::new()
        );
        assert_eq!(
            expired_followers(&contacts, |_| false, 10_000, 0),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            expired_followers(&contacts, |_| false, 1_000, 1),
            vec![3],
            "a clock behind a contact counts as no time away"
        );
    }

    #[test]
    fn cursor_names_round_trip_and_others_are_not_followers() {
        assert_eq!(follower_of(&cursor_name(0xabc)), Some(0xabc));
        assert_eq!(follower_of(&cursor_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(follower_of("replica-zz"), None);
        assert_eq!(follower_of("replica-1"), None);
        assert_eq!(follower_of("laggard"), None);
    }

    #[test]
    fn cursors_found_at_start_expire_and_connected_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.set_cursor("laggard", 0).unwrap();
        let registry = FollowerRegistry::load(&db);
        assert!(registry.hold(7, 0));
        let connected: Mutex<HashMap<u64, ()>> = Mutex::new(HashMap::new());
        // A later server on the same database finds the cursor.
        let registry = FollowerRegistry::load(&db);
        assert!(
            registry.expire(&connected, u64::MAX).is_empty(),
            "within the horizon"
        );
        connected.lock().insert(7, ());
        assert!(registry.expire(&connected, 0).is_empty(), "connected");
        connected.lock().clear();
        assert_eq!(registry.expire(&connected, 0), vec![7]);
        assert!(db.cursor(&cursor_name(7)).is_none());
        assert!(db.cursor("laggard").is_some(), "not a follower's cursor");
    }
}
