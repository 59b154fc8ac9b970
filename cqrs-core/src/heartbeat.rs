//! Publisher heartbeats: how recovery tells a publisher that is gone from
//! one still running its handlers.
//!
//! Every [`Engine`](crate::Engine) is a publisher with an id of its own. It
//! stamps the command rows of its sync publishes and commits with that id
//! ([`CommandRecord::publisher`](crate::CommandRecord::publisher)) and keeps
//! a heartbeat row of the id in storage, renewed every third of
//! [`EngineConfig::publisher_lease`](crate::EngineConfig::publisher_lease)
//! while it lives. Recovery ([`Engine::settle`](crate::Engine::settle)) runs
//! the handlers of a row left `applied` as soon as its publisher's heartbeat
//! has expired, instead of waiting for the whole recovery grace.

use chrono::{DateTime, Utc};

/// What a backend knows of a publisher's heartbeat
/// ([`Storage::get_heartbeat`](crate::Storage::get_heartbeat)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Heartbeat {
    /// Renewed until then (it may have expired since).
    Until(DateTime<Utc>),
    /// No heartbeat row: the publisher never wrote one, or it was removed
    /// long after it expired.
    Missing,
    /// The backend keeps no heartbeats: recovery waits for the recovery grace.
    Unsupported,
}

/// What [`Storage::renew_heartbeat`](crate::Storage::renew_heartbeat) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeartbeatRenewal {
    /// The heartbeat lasts until the expiry given.
    Renewed,
    /// The heartbeat had expired: the publisher counts as gone (recovery may
    /// have taken its work over), and nothing was written. It stays gone:
    /// the engine goes on under a new id.
    Expired,
    /// The backend keeps no heartbeats: the engine stamps no rows, and
    /// recovery waits for the recovery grace.
    Unsupported,
}

/// A new publisher id, unique to one engine of one process.
pub(crate) fn new_publisher_id() -> smol_str::SmolStr {
    smol_str::SmolStr::new(uuid::Uuid::new_v4().simple().to_string())
}
