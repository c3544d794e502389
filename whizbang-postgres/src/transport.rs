//! The PostgreSQL transport: one service's outbox delivered into other
//! services' inboxes through the database they share, with no broker.

use crate::queue::{db_failed, json_text, to_micros};
use crate::SchemaName;
use sqlx::PgPool;
use whizbang_core::backend::BoxFuture;
use whizbang_core::outbox::Transport;
use whizbang_core::queue::QueuedMessage;
use whizbang_core::{Error, Result};

/// A target service: its schema, and the message types it takes (`None`: all).
#[derive(Clone, Debug)]
struct Target {
    schema: SchemaName,
    types: Option<Vec<String>>,
    /// `select "<schema>".wh_enqueue(..)`, built once from the validated name.
    statement: String,
}

/// A [`Transport`] into the inbox queues of other services in the same
/// database, each in its own schema
/// ([`PostgresOptions::schema`](crate::PostgresOptions::schema)).
///
/// [`publish`](Transport::publish) calls the target schema's `wh_enqueue`
/// function (migration `0004_outbox.sql`) for each target that takes the
/// message's type: the message waits in that service's `wh_message_queue`
/// for its [`InboxWorker`](whizbang_core::inbox::InboxWorker), which leases
/// it and hands it to its [`Inbox`](whizbang_core::inbox::Inbox). The
/// function is idempotent by message id (a message already queued,
/// processed or dead-lettered there is left alone), pinned to its own
/// schema (so it reaches the target's tables from the sender's session),
/// and NOTIFYs the target's queue channel. `publish` returns once every
/// target's insert committed: the "broker accepted it". A publish that
/// fails after some targets took it is retried by the outbox, and the
/// targets that have it ignore the copy.
///
/// The schema names come from your configuration, are validated
/// ([`SchemaName`]) and quoted; message values travel as bind parameters.
///
/// ```no_run
/// # async fn run(orders: whizbang_postgres::Postgres) -> whizbang_core::Result<()> {
/// use std::sync::Arc;
/// use whizbang_core::outbox::OutboxPublisher;
/// use whizbang_postgres::PgTransport;
///
/// // Service "orders" publishes into service "billing"'s inbox.
/// let transport = PgTransport::new(orders.pool().clone()).deliver_to("billing")?;
/// let publisher = OutboxPublisher::new(Arc::new(orders.outbox()), Arc::new(transport));
/// let handle = publisher.start();
/// # handle.shutdown().await; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgTransport {
    pool: PgPool,
    targets: Vec<Target>,
}

impl PgTransport {
    /// A transport over `pool` (the sender's) with no target yet.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        PgTransport {
            pool,
            targets: Vec::new(),
        }
    }

    fn target(mut self, schema: &str, types: Option<Vec<String>>) -> Result<Self> {
        let schema = SchemaName::new(schema)?;
        let statement = format!(
            "select {}.wh_enqueue($1, $2, $3::jsonb, $4, $5, $6::jsonb, \
             'epoch'::timestamptz + $7 * interval '1 microsecond')",
            schema.quoted()
        );
        self.targets.push(Target {
            schema,
            types,
            statement,
        });
        Ok(self)
    }

    /// Delivers every message to the inbox of the service in `schema`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid schema name ([`SchemaName::new`]).
    pub fn deliver_to(self, schema: &str) -> Result<Self> {
        self.target(schema, None)
    }

    /// Delivers the messages of these wire names only to the inbox of the
    /// service in `schema`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid schema name.
    pub fn deliver_types_to(self, schema: &str, types: &[&str]) -> Result<Self> {
        let types = types.iter().map(|t| (*t).to_owned()).collect();
        self.target(schema, Some(types))
    }

    /// The target schemas.
    #[must_use]
    pub fn targets(&self) -> Vec<&SchemaName> {
        self.targets.iter().map(|t| &t.schema).collect()
    }

    async fn publish_now(&self, message: &QueuedMessage) -> Result<()> {
        message.validate()?;
        let headers = json_text(&message.headers, message.id)?;
        for target in &self.targets {
            if let Some(types) = &target.types {
                if !types.contains(&message.message_type) {
                    continue;
                }
            }
            let outcome: String = sqlx::query_scalar(&target.statement)
                .bind(message.id.as_uuid())
                .bind(&message.message_type)
                .bind(message.payload.get())
                .bind(message.correlation_id.as_uuid())
                .bind(message.causation_id.map(|c| c.as_uuid()))
                .bind(&headers)
                .bind(to_micros(message.enqueued_at))
                .fetch_one(&self.pool)
                .await
                .map_err(db_failed(format!(
                    "deliver message {} into the inbox of schema `{}` (is that service \
                             migrated?)",
                    message.id, target.schema
                )))?;
            match outcome.as_str() {
                "queued" | "exists" | "processed" | "dead" => {
                    tracing::debug!(target_schema = %target.schema, %outcome, message_id = %message.id, "delivered");
                }
                other => {
                    return Err(Error::Invariant(format!(
                    "wh_enqueue in schema `{}` answered {other:?}; is it newer than this build?",
                    target.schema
                )))
                }
            }
        }
        Ok(())
    }
}

impl Transport for PgTransport {
    fn publish<'a>(&'a self, message: &'a QueuedMessage) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.publish_now(message))
    }
}
