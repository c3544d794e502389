//! # whizbang
//!
//! Event-sourced CQRS for Rust with exact read-your-writes on asynchronous
//! read models. Receptors handle commands and events; perspectives fold events
//! into read models; the routing is generated at compile time by attribute
//! macros and registered with `inventory`.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use uuid::Uuid;
//! use whizbang_core::{perspective, receptor, Command, Context, Event, LensQuery, Receptor, Result, Runtime};
//!
//! #[derive(Command, Serialize, Deserialize)]
//! #[command(output = Uuid)]
//! struct OpenAccount { owner: String }
//!
//! #[derive(Event, Serialize, Deserialize)]
//! struct AccountOpened { #[stream_key] account: Uuid, owner: String }
//!
//! #[derive(Default)]
//! struct Accounts;
//!
//! #[receptor]
//! impl Receptor<OpenAccount> for Accounts {
//!     async fn handle(&self, cmd: OpenAccount, cx: &mut Context) -> Result<Uuid> {
//!         let account = Uuid::now_v7();
//!         cx.emit(AccountOpened { account, owner: cmd.owner })?;
//!         Ok(account)
//!     }
//! }
//!
//! #[derive(Default, Clone, Serialize, Deserialize)]
//! struct AccountView { owner: String }
//!
//! struct AccountViews;
//!
//! #[perspective(model = AccountView, mode = inline)]
//! impl AccountViews {
//!     fn opened(view: &mut AccountView, e: &AccountOpened) {
//!         view.owner = e.owner.clone();
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let runtime = Runtime::in_memory()?;
//! let scope = runtime.scope();
//! let id = scope.send(OpenAccount { owner: "ada".into() }).await?;
//! scope.complete().await?; // inline perspectives apply here
//! let view = runtime.lens::<AccountViews>().get(id.into()).await?.unwrap();
//! assert_eq!(view.owner, "ada");
//! # Ok(()) }
//! ```
//!
//! ## Modules
//! - [`message`]: commands, events, envelopes, ids.
//! - [`dispatch`]: the runtime, scopes, receptors and their context.
//! - [`perspective`](mod@perspective): read-model folds, the engine and the async runner.
//! - [`lens`]: reading models.
//! - [`store`]: the storage traits and the in-memory backend.
//! - [`queue`]: the lease-based message queue under the inbox and the outbox.
//! - [`outbox`]: outbound events (`#[event(publish)]`), written in the append, published through a transport.
//! - [`inbox`]: messages from other processes, each handled once in its own scope, and the worker that recovers orphans.
//! - [`backend`]: the seam a storage backend implements, with its contract in one place.
//! - [`registry`]: the compile-time routing tables.
//! - [`services`]: typed services for receptors.
//! - [`stage`]: lifecycle stages (where and how event receptors fire).
//! - [`sync`]: waiting until perspectives applied your events (read-your-writes).
//! - [`testing`]: a given / when / then harness on a chosen subset of handlers.
//!
//! The modules are layered: no module imports one that imports it, directly or
//! through others (the `layers` test reads `src/` and fails naming any cycle).

#[allow(unused_extern_crates)] // lets the macros' `::whizbang_core` paths resolve inside this crate
extern crate self as whizbang_core;

pub mod backend;
pub mod dispatch;
pub mod error;
pub mod inbox;
pub mod lens;
pub mod message;
pub mod outbox;
pub mod perspective;
pub mod queue;
pub mod registry;
pub mod services;
pub mod stage;
pub mod store;
pub mod sync;
pub mod testing;
pub(crate) mod util;

pub use dispatch::{
    Context, DetachedFailure, NotSynced, Receptor, Runtime, RuntimeBuilder, Scope, SendAndSync,
    SyncRequirement, WeakRuntime,
};
pub use dispatch::{PerspectiveSync, SyncHandle};
pub use error::{Error, Result};
pub use lens::{Lens, LensQuery, ListQuery, SyncLensExt, SyncedLens};
pub use message::{
    Command, Envelope, Event, EventId, ExpectedVersion, InstanceId, Message, MessageId,
    MessageKind, Metadata, StreamId, StreamKey,
};
pub use perspective::{
    strategy, IntoModelKey, Model, Perspective, PerspectiveMode, PerspectiveStatus, Versioned,
};
pub use perspective::{ModelOp, SyncCondition, SyncItem, SyncMode, SyncReport, SyncRun, Tombstone};
pub use registry::{Registry, RegistryBuilder};
pub use services::{FromServices, Services};
pub use stage::{LifecycleStage, StageMode, StagePoint, SyncFire};
pub use sync::{
    PerspectiveSyncAwaiter, PerspectiveSyncOptions, StrategyRun, SyncFilter, SyncOutcome,
    SyncResult,
};
pub use whizbang_macros::{await_perspective_sync, fire_at, perspective, receptor, Command, Event};

/// Support for generated code. Not a public API: it changes without notice.
#[doc(hidden)]
pub mod __private {
    pub use crate::dispatch::{Receptor, Registered, SyncRequirement};
    pub use crate::message::{Command, Event, Message, MessageKind, StreamId, StreamKey};
    pub use crate::perspective::bulk::bulk_hook;
    pub use crate::perspective::strategy::{Batch, Realtime, Scheduled, SyncStrategy};
    pub use crate::perspective::BulkBatch;
    pub use crate::perspective::{
        applied, applied_op, event_payload, ApplyError, ApplyOutput, IntoModelKey, ModelOp,
        Perspective, PerspectiveMode,
    };
    pub use crate::registry::{MessageRegistration, PerspectiveRegistration, ReceptorRegistration};
    pub use crate::stage::names as stage;
    pub use crate::stage::{LifecycleStage, SyncFire};
    pub use crate::store::ModelKey;
    pub use crate::store::{BoxFuture, StoredEvent};
    pub use ::core::any::TypeId;
    pub use ::core::option::Option;
    pub use ::core::result::Result;
    pub use ::core::time::Duration;
    pub use ::std::boxed::Box;
    pub use ::std::vec::Vec;
    pub use inventory;
}
