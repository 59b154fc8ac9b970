//! What the schedule's callers were told: the ground truth the audit holds
//! the tables to.

use super::*;

/// What the schedule's callers were told: the ground truth the audit holds
/// the tables to. Lives outside every process (a crash loses none of it).
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Order requests: (tenant, request tag) -> what each try was answered.
    pub(super) placed: BTreeMap<(String, String), Vec<Answer>>,
    /// Keyed status moves: (tenant, key) -> answers.
    pub(super) moves: BTreeMap<(String, String), Vec<Answer>>,
    /// Reads that returned another tenant's order.
    pub(super) cross_tenant_reads: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Answer {
    Placed(String),
    Moved {
        version: u64,
    },
    Read {
        pk: String,
    },
    /// An error answer: its HTTP status and kind.
    Refused(u16, &'static str),
    /// No answer: the server crashed or the client timed out.
    Lost,
}

pub(super) type SharedLedger = Arc<Mutex<Ledger>>;

pub(super) fn ledger(ledger: &SharedLedger) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}
