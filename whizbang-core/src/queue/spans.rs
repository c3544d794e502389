//! The tracing spans every [`MessageQueue`](super::MessageQueue) operation runs
//! in, built in one place so that every backend names them and their fields
//! alike (`whizbang.queue.<operation>`, at debug level). A backend enters the
//! span around its work for that operation.

use super::QueuedMessage;
use crate::message::{InstanceId, MessageId};
use std::time::Duration;
use tracing::Span;

/// `whizbang.queue.enqueue_and_lease`: message id, type, correlation id, instance.
#[must_use]
pub fn enqueue_and_lease(message: &QueuedMessage, instance: InstanceId) -> Span {
    tracing::debug_span!(
        "whizbang.queue.enqueue_and_lease",
        message_id = %message.id,
        message_type = %message.message_type,
        correlation_id = %message.correlation_id,
        %instance,
    )
}

/// `whizbang.queue.lease_orphaned`: instance and batch size.
#[must_use]
pub fn lease_orphaned(instance: InstanceId, max: usize) -> Span {
    tracing::debug_span!("whizbang.queue.lease_orphaned", %instance, max)
}

/// `whizbang.queue.complete`: message id, instance and handler.
#[must_use]
pub fn complete(id: MessageId, instance: InstanceId, handler: &str) -> Span {
    tracing::debug_span!("whizbang.queue.complete", message_id = %id, %instance, handler)
}

/// `whizbang.queue.fail`: message id and instance.
#[must_use]
pub fn fail(id: MessageId, instance: InstanceId) -> Span {
    tracing::debug_span!("whizbang.queue.fail", message_id = %id, %instance)
}

/// `whizbang.queue.renew`: how many messages, and the instance.
#[must_use]
pub fn renew(count: usize, instance: InstanceId) -> Span {
    tracing::debug_span!("whizbang.queue.renew", count, %instance)
}

/// `whizbang.queue.release`: how many messages, and the instance.
#[must_use]
pub fn release(count: usize, instance: InstanceId) -> Span {
    tracing::debug_span!("whizbang.queue.release", count, %instance)
}

/// `whizbang.queue.processed`: the message id asked about.
#[must_use]
pub fn processed(id: MessageId) -> Span {
    tracing::debug_span!("whizbang.queue.processed", message_id = %id)
}

/// `whizbang.queue.prune_processed`: the retention window and batch size.
#[must_use]
pub fn prune_processed(older_than: Duration, batch: usize) -> Span {
    tracing::debug_span!("whizbang.queue.prune_processed", ?older_than, batch)
}

/// `whizbang.queue.dead_letters`: how many at most.
#[must_use]
pub fn dead_letters(max: usize) -> Span {
    tracing::debug_span!("whizbang.queue.dead_letters", max)
}

/// `whizbang.queue.replay_dead_letters`: how many messages.
#[must_use]
pub fn replay_dead_letters(count: usize) -> Span {
    tracing::debug_span!("whizbang.queue.replay_dead_letters", count)
}

/// `whizbang.queue.tick`: the instance, how many completions, failures and
/// renewals it reports, and how many leases it asks for.
#[must_use]
pub fn tick(
    instance: InstanceId,
    completed: usize,
    failed: usize,
    renew: usize,
    lease_max: usize,
) -> Span {
    tracing::debug_span!(
        "whizbang.queue.tick",
        %instance,
        completed,
        failed,
        renew,
        lease_max,
    )
}
