//! The outbox in memory, fed by the memory event store's appends.

use super::{message_of, Outbox, OutboxEntry, OutboxStatus};
use crate::error::{Error, Result};
use crate::message::{EventId, InstanceId, MessageId, StreamId};
use crate::queue::{DeadLetter, FailOutcome, LeasedMessage, QueueOptions, QueuedMessage};
use crate::store::{BoxFuture, OutboxSink, StoredEvent};
use crate::util::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

#[derive(Clone, Debug)]
enum State {
    /// Waiting (until `available_at`) or leased (`owner` set, until `available_at`).
    Pending {
        owner: Option<InstanceId>,
        available_at: SystemTime,
    },
    Published,
    Dead {
        error: String,
        dead_at: SystemTime,
    },
}

#[derive(Clone, Debug)]
struct Row {
    message: QueuedMessage,
    stream_id: StreamId,
    stream_version: u64,
    attempts: u32,
    last_error: Option<String>,
    state: State,
    /// Write order, for "oldest first".
    seq: u64,
}

#[derive(Default)]
struct Rows {
    by_id: HashMap<MessageId, Row>,
    next_seq: u64,
}

/// An outbox in memory: rows written by a
/// [`MemoryEventStore`](crate::store::memory::MemoryEventStore) built
/// [`with_outbox`](crate::store::memory::MemoryEventStore::with_outbox) it,
/// leased by an [`OutboxPublisher`](super::OutboxPublisher). Cheap to clone
/// (shared). Its [`wakeup`](Self::wakeup) is notified on every write.
#[derive(Clone)]
pub struct MemoryOutbox {
    rows: Arc<Mutex<Rows>>,
    options: QueueOptions,
    wakeup: Arc<Notify>,
}

impl Default for MemoryOutbox {
    fn default() -> Self {
        Self::with_options(QueueOptions::default())
    }
}

impl std::fmt::Debug for MemoryOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryOutbox")
            .field("rows", &lock(&self.rows).by_id.len())
            .field("options", &self.options)
            .finish()
    }
}

impl MemoryOutbox {
    /// An empty outbox with the default options (5 attempts).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty outbox with these options.
    #[must_use]
    pub fn with_options(options: QueueOptions) -> Self {
        MemoryOutbox {
            rows: Arc::default(),
            options,
            wakeup: Arc::new(Notify::new()),
        }
    }

    /// Notified after every write: hand it to
    /// [`OutboxPublisher::wake_on`](super::OutboxPublisher::wake_on).
    #[must_use]
    pub fn wakeup(&self) -> Arc<Notify> {
        Arc::clone(&self.wakeup)
    }

    /// How many rows it holds (published and dead ones included).
    #[must_use]
    pub fn len(&self) -> usize {
        lock(&self.rows).by_id.len()
    }

    /// Whether it holds no row.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn held(row: &Row, instance: InstanceId) -> bool {
        matches!(row.state, State::Pending { owner: Some(o), .. } if o == instance)
    }
}

fn lease_lost(id: MessageId, instance: InstanceId) -> Error {
    Error::LeaseLost {
        message_ids: vec![id],
        instance,
    }
}

impl OutboxSink for MemoryOutbox {
    fn write(&self, events: &[Arc<StoredEvent>]) {
        let now = SystemTime::now();
        let mut rows = lock(&self.rows);
        for event in events {
            let seq = rows.next_seq;
            rows.next_seq += 1;
            let id = MessageId::from(event.event_id);
            rows.by_id.entry(id).or_insert_with(|| Row {
                message: message_of(event),
                stream_id: event.stream_id,
                stream_version: event.stream_version,
                attempts: 0,
                last_error: None,
                state: State::Pending {
                    owner: None,
                    available_at: now,
                },
                seq,
            });
        }
        drop(rows);
        self.wakeup.notify_one();
    }
}

impl Outbox for MemoryOutbox {
    fn options(&self) -> &QueueOptions {
        &self.options
    }

    fn lease(
        &self,
        instance: InstanceId,
        max: usize,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<OutboxEntry>>> {
        let result = (|| {
            if max == 0 || lease.is_zero() {
                return Err(Error::InvalidInput(format!(
                    "an outbox lease needs max >= 1 and a non-zero lease (got max {max}, lease \
                     {lease:?}); nothing was leased"
                )));
            }
            let now = SystemTime::now();
            let limit = self.options.max_attempts;
            let mut rows = lock(&self.rows);
            let mut due: Vec<(u64, MessageId)> = rows
                .by_id
                .iter()
                .filter(|(_, r)| matches!(r.state, State::Pending { available_at, .. } if available_at <= now))
                .map(|(id, r)| (r.seq, *id))
                .collect();
            due.sort_unstable();
            let mut out = Vec::new();
            for (_, id) in due {
                if out.len() >= max {
                    break;
                }
                let Some(row) = rows.by_id.get_mut(&id) else {
                    continue;
                };
                let expired_owner = matches!(row.state, State::Pending { owner: Some(_), .. });
                if row.attempts >= limit {
                    let error = match (&row.last_error, expired_owner) {
                        (_, true) | (None, _) => crate::queue::lease_expired_error(row.attempts),
                        (Some(e), false) => e.clone(),
                    };
                    row.state = State::Dead {
                        error,
                        dead_at: now,
                    };
                    continue;
                }
                row.attempts += 1;
                let expires = now + lease;
                row.state = State::Pending {
                    owner: Some(instance),
                    available_at: expires,
                };
                out.push(OutboxEntry {
                    leased: LeasedMessage {
                        message: row.message.clone(),
                        attempt: row.attempts,
                        lease_expires_at: expires,
                        last_error: row.last_error.clone(),
                    },
                    stream_id: row.stream_id,
                    stream_version: row.stream_version,
                });
            }
            Ok(out)
        })();
        Box::pin(std::future::ready(result))
    }

    fn mark_published(&self, id: MessageId, instance: InstanceId) -> BoxFuture<'_, Result<()>> {
        let mut rows = lock(&self.rows);
        let result = match rows.by_id.get_mut(&id) {
            Some(row) if Self::held(row, instance) => {
                row.state = State::Published;
                Ok(())
            }
            _ => Err(lease_lost(id, instance)),
        };
        Box::pin(std::future::ready(result))
    }

    fn fail<'a>(
        &'a self,
        id: MessageId,
        instance: InstanceId,
        error: &'a str,
        retry_in: Duration,
    ) -> BoxFuture<'a, Result<FailOutcome>> {
        let now = SystemTime::now();
        let limit = self.options.max_attempts;
        let mut rows = lock(&self.rows);
        let result = match rows.by_id.get_mut(&id) {
            Some(row) if Self::held(row, instance) => {
                row.last_error = Some(error.to_owned());
                if row.attempts >= limit {
                    row.state = State::Dead {
                        error: error.to_owned(),
                        dead_at: now,
                    };
                    Ok(FailOutcome::DeadLettered {
                        attempts: row.attempts,
                    })
                } else {
                    row.state = State::Pending {
                        owner: None,
                        available_at: now + retry_in,
                    };
                    Ok(FailOutcome::Retry {
                        attempts: row.attempts,
                    })
                }
            }
            _ => Err(lease_lost(id, instance)),
        };
        Box::pin(std::future::ready(result))
    }

    fn release<'a>(
        &'a self,
        ids: &'a [MessageId],
        instance: InstanceId,
    ) -> BoxFuture<'a, Result<()>> {
        let now = SystemTime::now();
        let mut rows = lock(&self.rows);
        for id in ids {
            if let Some(row) = rows.by_id.get_mut(id) {
                if Self::held(row, instance) {
                    row.attempts = row.attempts.saturating_sub(1);
                    row.state = State::Pending {
                        owner: None,
                        available_at: now,
                    };
                }
            }
        }
        drop(rows);
        self.wakeup.notify_one();
        Box::pin(std::future::ready(Ok(())))
    }

    fn status(&self, id: EventId) -> BoxFuture<'_, Result<Option<OutboxStatus>>> {
        let rows = lock(&self.rows);
        let status = rows
            .by_id
            .get(&MessageId::from(id))
            .map(|row| match &row.state {
                State::Pending { .. } => OutboxStatus::Pending {
                    attempts: row.attempts,
                    last_error: row.last_error.clone(),
                },
                State::Published => OutboxStatus::Published {
                    attempts: row.attempts,
                },
                State::Dead { error, .. } => OutboxStatus::DeadLettered {
                    attempts: row.attempts,
                    error: error.clone(),
                },
            });
        Box::pin(std::future::ready(Ok(status)))
    }

    fn dead_letters(&self, max: usize) -> BoxFuture<'_, Result<Vec<DeadLetter>>> {
        if max == 0 {
            return Box::pin(std::future::ready(Err(Error::InvalidInput(
                "dead letters: max must be at least 1".to_owned(),
            ))));
        }
        let rows = lock(&self.rows);
        let mut dead: Vec<(SystemTime, u64, DeadLetter)> = rows
            .by_id
            .values()
            .filter_map(|row| match &row.state {
                State::Dead { error, dead_at } => Some((
                    *dead_at,
                    row.seq,
                    DeadLetter {
                        message: row.message.clone(),
                        attempts: row.attempts,
                        error: error.clone(),
                        dead_at: *dead_at,
                    },
                )),
                _ => None,
            })
            .collect();
        dead.sort_by_key(|a| (a.0, a.1));
        let out = dead.into_iter().take(max).map(|(_, _, d)| d).collect();
        Box::pin(std::future::ready(Ok(out)))
    }
}
