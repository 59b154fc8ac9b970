//! Bugs this project once had, kept as switches that put them back, so that
//! the deterministic simulation ([`testing::sim`](crate::testing::sim)) can
//! show it finds each of them. Not part of the API: every switch is off
//! unless a test turns it on for its own thread (feature `testing`), and
//! without that feature [`active`] is a constant `false`.

/// A keyed read-modify-write whose closure refuses or skips, or whose
/// publish conflicts, answers that outcome without looking the key up
/// again: a racing duplicate is judged on the entity the first run moved
/// (a retried `PATCH /orders/{code}/status` answered `invalid_transition`).
pub const KEYED_RETRY_JUDGED_ON_MOVED_ENTITY: &str = "keyed-retry-judged-on-moved-entity";

/// The stream pipeline skips command rows inserted `applied` (sync
/// publishes and commits), trusting their publisher to finish them: a sync
/// publish whose publisher dies after its commit never runs its handlers.
pub const SYNC_PUBLISH_LEFT_TO_PUBLISHER: &str = "sync-publish-left-to-publisher";

/// Whether the switch `name` is on for this thread.
#[inline]
pub fn active(name: &str) -> bool {
    #[cfg(feature = "testing")]
    {
        ON.with(|on| on.borrow().contains(&name))
    }
    #[cfg(not(feature = "testing"))]
    {
        let _ = name;
        false
    }
}

#[cfg(feature = "testing")]
thread_local! {
    static ON: std::cell::RefCell<Vec<&'static str>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Turns the switch `name` on for this thread until the guard is dropped.
#[cfg(feature = "testing")]
#[must_use = "the switch is off again once the guard is dropped"]
pub fn reintroduce(name: &'static str) -> Reintroduced {
    ON.with(|on| on.borrow_mut().push(name));
    Reintroduced(name)
}

/// Keeps a switch on ([`reintroduce`]).
#[cfg(feature = "testing")]
#[derive(Debug)]
pub struct Reintroduced(&'static str);

#[cfg(feature = "testing")]
impl Drop for Reintroduced {
    fn drop(&mut self) {
        ON.with(|on| {
            let mut on = on.borrow_mut();
            if let Some(at) = on.iter().position(|switch| *switch == self.0) {
                on.remove(at);
            }
        });
    }
}
