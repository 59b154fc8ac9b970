//! The command table's stream, simulated: every landed command row is a
//! record of a shard (by entity, so one entity's records stay in order),
//! read by consumers that lease shards, checkpoint what they finished, and
//! get records again, late, or out of order with other shards.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::world::{fnv1a, World, FNV_OFFSET};
use crate::keys::EntityKey;
use crate::model::CommandStatus;

/// One record: the insert of a command row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// Position in the stream, increasing across shards (as DynamoDB's
    /// sequence numbers are within a shard).
    pub sequence: u64,
    /// The shard it is in.
    pub shard: usize,
    /// The command's entity.
    pub key: EntityKey,
    /// The command's version.
    pub version: u64,
    /// The status the row was inserted with.
    pub inserted: CommandStatus,
}

/// What a consumer's batch function answers, as a Lambda function with
/// partial batch responses does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Every record is done: the checkpoint moves past the batch.
    Done,
    /// Records before this sequence number are done; the batch is retried
    /// from it.
    RetryFrom(u64),
    /// Nothing is known to be done: the whole batch comes again.
    Failed,
}

/// How the stream misbehaves, and how its consumers work.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamFaults {
    /// Shards the records are spread over.
    pub shards: usize,
    /// Records per batch, at most.
    pub batch: usize,
    /// A batch that was done is delivered again (before its checkpoint
    /// moves), with this probability.
    pub duplicate: f64,
    /// A batch waits this long at most before it is delivered, with
    /// probability [`StreamFaults::late`].
    pub longest_delay: Duration,
    /// Probability that a batch is delivered late.
    pub late: f64,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// How often a consumer looks for records and leases.
    pub poll: Duration,
}

impl Default for StreamFaults {
    fn default() -> Self {
        Self {
            shards: 3,
            batch: 4,
            duplicate: 0.05,
            longest_delay: Duration::from_millis(800),
            late: 0.05,
            lease: Duration::from_secs(2),
            poll: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Default)]
struct Shard {
    records: Vec<StreamRecord>,
    /// Records before this index are done.
    checkpoint: usize,
    /// The consumer holding the lease, and until when (simulated time).
    lease: Option<(String, Duration)>,
}

/// The stream of one simulated command table (see the module documentation).
#[derive(Debug)]
pub struct SimStream {
    world: Arc<World>,
    faults: StreamFaults,
    shards: Mutex<Vec<Shard>>,
    next_sequence: Mutex<u64>,
}

impl SimStream {
    /// An empty stream.
    pub fn new(world: Arc<World>, faults: StreamFaults) -> Self {
        let shards = (0..faults.shards.max(1)).map(|_| Shard::default()).collect();
        Self {
            world,
            faults,
            shards: Mutex::new(shards),
            next_sequence: Mutex::new(0),
        }
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, Vec<Shard>> {
        self.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the insert of a command row.
    pub fn append(&self, key: EntityKey, version: u64, inserted: CommandStatus) {
        let sequence = {
            let mut next = self.next_sequence.lock().unwrap_or_else(PoisonError::into_inner);
            *next += 1;
            *next
        };
        let mut shards = self.shards();
        let shard = shard_of(&key, shards.len());
        shards[shard].records.push(StreamRecord {
            sequence,
            shard,
            key,
            version,
            inserted,
        });
    }

    /// Records not yet checkpointed, over every shard.
    pub fn behind(&self) -> usize {
        self.shards().iter().map(|s| s.records.len() - s.checkpoint).sum()
    }

    /// Records appended so far.
    pub fn len(&self) -> usize {
        self.shards().iter().map(|s| s.records.len()).sum()
    }

    /// Whether nothing was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every record appended so far, by sequence number: every command row
    /// that landed, whoever wrote it and whatever its writer was told.
    pub fn records(&self) -> Vec<StreamRecord> {
        let mut records: Vec<StreamRecord> = self
            .shards()
            .iter()
            .flat_map(|s| s.records.iter().cloned())
            .collect();
        records.sort_by_key(|r| r.sequence);
        records
    }

    /// How many shards the stream has.
    pub fn shard_count(&self) -> usize {
        self.shards().len()
    }

    /// Up to `limit` records of `shard` after sequence number `after` (from
    /// its first record without one): what a consumer with leases and
    /// checkpoints of its own reads (the DynamoDB stream consumer, through
    /// a simulated source). Checkpoints of this stream do not move.
    pub fn read(&self, shard: usize, after: Option<u64>, limit: usize) -> Vec<StreamRecord> {
        let shards = self.shards();
        let Some(shard) = shards.get(shard) else {
            return Vec::new();
        };
        shard
            .records
            .iter()
            .filter(|r| after.is_none_or(|after| r.sequence > after))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Takes or renews the lease of every shard `consumer` may hold: free,
    /// expired, or its own. Returns the shards it holds.
    fn lease(&self, consumer: &str) -> Vec<usize> {
        let now = self.world.now();
        let until = now + self.faults.lease;
        let mut held = Vec::new();
        let mut shards = self.shards();
        for (index, shard) in shards.iter_mut().enumerate() {
            let take = match &shard.lease {
                None => true,
                Some((owner, expires)) => owner == consumer || *expires <= now,
            };
            if take {
                if shard.lease.as_ref().is_some_and(|(owner, _)| owner != consumer) {
                    self.world
                        .trace(format_args!("{consumer} takes over shard {index}"));
                }
                shard.lease = Some((consumer.to_owned(), until));
                held.push(index);
            }
        }
        held
    }

    fn holds(&self, consumer: &str, shard: usize) -> bool {
        let now = self.world.now();
        self.shards()[shard]
            .lease
            .as_ref()
            .is_some_and(|(owner, expires)| owner == consumer && *expires > now)
    }

    /// The next batch of `shard` after its checkpoint.
    fn batch(&self, shard: usize) -> Vec<StreamRecord> {
        let shards = self.shards();
        let shard = &shards[shard];
        let end = (shard.checkpoint + self.faults.batch).min(shard.records.len());
        shard.records[shard.checkpoint..end].to_vec()
    }

    /// Moves the checkpoint of `shard` up to (not including) `sequence`,
    /// or past `batch`, if `consumer` still holds the lease (fencing: a
    /// consumer that lost it moves nothing).
    fn checkpoint(&self, consumer: &str, shard: usize, batch: &[StreamRecord], upto: Option<u64>) {
        if !self.holds(consumer, shard) {
            self.world
                .trace(format_args!("{consumer} lost shard {shard}: checkpoint refused"));
            return;
        }
        let done = match upto {
            Some(sequence) => batch.iter().take_while(|r| r.sequence < sequence).count(),
            None => batch.len(),
        };
        let mut shards = self.shards();
        let shard = &mut shards[shard];
        // Only forward, and only over the batch read from the checkpoint.
        if shard.records.get(shard.checkpoint).map(|r| r.sequence) == batch.first().map(|r| r.sequence) {
            shard.checkpoint += done;
        }
    }

    /// Releases every lease of `consumer` (a graceful stop).
    pub fn release(&self, consumer: &str) {
        for shard in self.shards().iter_mut() {
            if shard.lease.as_ref().is_some_and(|(owner, _)| owner == consumer) {
                shard.lease = None;
            }
        }
    }

    /// Runs a consumer named `consumer` forever: leases shards, and hands
    /// each leased shard's batches, in order, to `deliver`. Shards are
    /// worked one after another in a random order each round; a batch may
    /// come late or twice; the checkpoint moves only as `deliver` says
    /// and only while the lease is held.
    pub async fn consume<F, Fut>(self: Arc<Self>, consumer: String, deliver: F)
    where
        F: Fn(Vec<StreamRecord>) -> Fut,
        Fut: Future<Output = BatchOutcome>,
    {
        let renewer = {
            let stream = self.clone();
            let consumer = consumer.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(stream.faults.lease / 3).await;
                    // Renews only what it holds: taking new shards is the loop's.
                    let now = stream.world.now();
                    for shard in stream.shards().iter_mut() {
                        if let Some((owner, expires)) = &mut shard.lease {
                            if *owner == consumer && *expires > now {
                                *expires = now + stream.faults.lease;
                            }
                        }
                    }
                }
            })
        };
        let _renewer = AbortOnDrop(renewer);
        loop {
            let mut held = self.lease(&consumer);
            self.world.shuffle(&mut held);
            for shard in held {
                let batch = self.batch(shard);
                if batch.is_empty() {
                    continue;
                }
                if self.world.chance(self.faults.late) {
                    let wait = self
                        .world
                        .between(Duration::from_millis(10), self.faults.longest_delay);
                    self.world
                        .trace(format_args!("{consumer}: shard {shard} batch late by {wait:?}"));
                    tokio::time::sleep(wait).await;
                }
                let first = batch[0].sequence;
                self.world.trace(format_args!(
                    "{consumer}: shard {shard} delivers {}",
                    batch
                        .iter()
                        .map(|r| format!(
                            "#{} {}/{}@{} {:?}",
                            r.sequence, r.key.pk, r.key.sk, r.version, r.inserted
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                let mut outcome = deliver(batch.clone()).await;
                if outcome == BatchOutcome::Done && self.world.chance(self.faults.duplicate) {
                    self.world
                        .trace(format_args!("{consumer}: shard {shard} delivers #{first} again"));
                    outcome = deliver(batch.clone()).await;
                }
                self.world.trace(format_args!(
                    "{consumer}: shard {shard} batch #{first}: {outcome:?}"
                ));
                match outcome {
                    BatchOutcome::Done => self.checkpoint(&consumer, shard, &batch, None),
                    BatchOutcome::RetryFrom(sequence) => {
                        self.checkpoint(&consumer, shard, &batch, Some(sequence))
                    }
                    BatchOutcome::Failed => {}
                }
            }
            tokio::time::sleep(self.faults.poll).await;
        }
    }
}

/// The shard of an entity: a stable hash, so the same seed shards the same.
fn shard_of(key: &EntityKey, shards: usize) -> usize {
    let hash = fnv1a(FNV_OFFSET, key.pk.bytes().chain([0]).chain(key.sk.bytes()));
    (hash % shards as u64) as usize
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entity_stays_in_one_shard() {
        let key = EntityKey::new("TENANT#a", "ORDER#1");
        assert_eq!(shard_of(&key, 5), shard_of(&key.clone(), 5));
    }
}
