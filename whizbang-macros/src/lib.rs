//! Attribute and derive macros for whizbang: compile-time routing registered
//! with `inventory`.
//!
//! Depend on `whizbang-core`, which re-exports them
//! (`use whizbang_core::{receptor, Event, ..}`): the generated code names
//! `::whizbang_core::__private::..` only. When the runtime is reached through
//! another path (a renamed dependency, a re-export), say so with
//! `crate = path` in any macro's arguments.
//!
//! This file is a thin door: each macro's parse, check and expand live in
//! its own module.

mod attr;
mod await_sync;
mod ctx;
mod fire_at;
mod lifecycle;
mod message;
mod perspective;
mod receptor;
mod relocate;
mod strategy;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Makes a struct an event: a fact stored in the stream named by its
/// `#[stream_key]` field, registered under its wire name.
///
/// - `#[stream_key]` marks exactly one field, whose type implements
///   `StreamKey` (`Uuid`, `StreamId`, or your own id type).
/// - `#[event(name = "orders.created")]` sets the wire name (default: the
///   type name). The wire name is stored with every event: keep it stable.
/// - `#[event(publish)]` makes it an outbound event: besides being stored,
///   every append of it writes an outbox row in the append's own
///   transaction, and an outbox publisher sends it to other services.
/// - `#[event(crate = path)]` names the runtime crate when it is not `::whizbang_core`.
///
/// Events must be concrete (non-generic) structs.
///
/// ```text
/// use whizbang_core::Event;
///
/// #[derive(Event, Serialize, Deserialize)]
/// #[event(name = "orders.created", publish)] // leaves the service through the outbox
/// struct OrderCreated {
///     #[stream_key]
///     order_id: Uuid,
///     total: u64,
/// }
/// ```
#[proc_macro_derive(Event, attributes(event, stream_key))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    message::expand_derive_event(input.into()).into()
}

/// Makes a struct or enum a command: a request handled by exactly one
/// receptor, which returns the command's output to the caller.
///
/// - `#[command(output = Type)]` is what the receptor returns (default `()`).
/// - `#[command(name = "orders.create")]` sets the wire name (default: the type name).
/// - `#[command(crate = path)]` names the runtime crate when it is not `::whizbang_core`.
///
/// Commands must be concrete (non-generic) types.
///
/// ```text
/// use whizbang_core::Command;
///
/// #[derive(Command, Serialize, Deserialize)]
/// #[command(output = OrderSummary)]
/// struct CreateOrder {
///     customer: String,
/// }
/// ```
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    message::expand_derive_command(input.into()).into()
}

/// Registers an `impl Receptor<M> for T` block, so the runtime routes `M` to `T`.
///
/// The impl is emitted unchanged (less the `#[fire_at]` and
/// `#[await_perspective_sync]` it reads); the receptor type must be concrete
/// (no `impl<T>`) and is built once per runtime through `FromServices`.
/// `#[receptor(crate = path)]` names the runtime crate when it is not `::whizbang_core`.
///
/// ```text
/// use whizbang_core::{receptor, Context, Receptor, Result};
///
/// #[derive(Default)]
/// struct OrderDesk;
///
/// #[receptor]
/// impl Receptor<CreateOrder> for OrderDesk {
///     async fn handle(&self, cmd: CreateOrder, cx: &mut Context) -> Result<OrderSummary> {
///         // ..
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn receptor(args: TokenStream, item: TokenStream) -> TokenStream {
    receptor::expand_receptor(args.into(), item.into()).into()
}

/// Makes an inherent impl of apply functions a perspective: a read model
/// folded from events, one method per event type.
///
/// Each method takes `(&mut Model, &Event)` (no `self`) and returns `()` or
/// `Result<(), E: Display>`. Helper methods in the same impl are marked
/// `#[perspective(skip)]`.
///
/// - `model = M` (required): the read model type.
/// - `name = ".."`: its stable name (default: the type name).
/// - `mode = inline | async`: applied when the emitting scope completes, or
///   in the background (default `async`).
/// - `key = field`: a keyed (multi-stream) perspective: one model per value
///   of `field`, which every handled event type must have, with a type that
///   converts into the model key (`IntoModelKey`: `Uuid`, `StreamId`, your
///   ids). Checked at compile time: a missing field is an error on the
///   event type in the method's signature. Applied by the runner in the
///   store's global order with one cursor; not with `mode = inline`.
/// - `crate = path`: the runtime crate when it is not `::whizbang_core`.
///
/// ```text
/// use whizbang_core::perspective;
///
/// struct OrderViews;
///
/// #[perspective(model = OrderView, mode = inline)]
/// impl OrderViews {
///     fn created(view: &mut OrderView, e: &OrderCreated) {
///         view.total = e.total;
///     }
///     fn shipped(view: &mut OrderView, _: &OrderShipped) -> Result<(), String> {
///         view.shipped = true;
///         Ok(())
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn perspective(args: TokenStream, item: TokenStream) -> TokenStream {
    perspective::expand_perspective(args.into(), item.into()).into()
}

/// Sets the lifecycle stage an event receptor fires at. Goes on a
/// `#[receptor]` impl, above or below `#[receptor]`.
///
/// The stage is one of `whizbang_core::LifecycleStage`: `PreDistribute`,
/// `PostDistribute`, `PreOutbox`, `PostOutbox`, `PreInbox`, `PostInbox`,
/// `PrePerspective`, `PostPerspective` or `PostAllPerspectives`, each
/// followed by `Inline` (in the flow, before it moves on: it must not wait)
/// or `Detached` (on its own task). Without `#[fire_at]` a receptor runs at
/// `PostDistributeInline`, or `PostDistributeDetached` when it awaits
/// perspective sync. An inline stage together with `#[await_perspective_sync]`
/// is a compile error: the wait would deadlock the flush it waits for.
///
/// Above `#[receptor]` it is a macro of its own (import it, or write its
/// path), which moves itself below `#[receptor]`; below, `#[receptor]` reads
/// it directly, under any path, and it needs no import.
///
/// ```text
/// use whizbang_core::{receptor, Context, Receptor, Result};
///
/// #[receptor]
/// #[fire_at(PostAllPerspectivesDetached)] // below `#[receptor]`: no import
/// impl Receptor<OrderShipped> for Mailer {
///     async fn handle(&self, e: OrderShipped, cx: &mut Context) -> Result<()> {
///         // ..
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn fire_at(args: TokenStream, item: TokenStream) -> TokenStream {
    lifecycle::expand_standalone(lifecycle::Helper::FireAt, args.into(), item.into()).into()
}

/// Makes an event receptor wait until a perspective has applied the events
/// of the current scope before it runs. Goes on a `#[receptor]` impl, above
/// or below `#[receptor]`; several of them wait for several perspectives.
///
/// - `P` (required, first): the perspective type to await.
/// - `event_types = [E1, E2]`: the event types to await in the current
///   scope (default: the incoming event itself).
/// - `timeout_ms = 2000`: how long to wait, in milliseconds (default 5000;
///   `0` checks once without waiting).
/// - `fire = on_success | always`: run only when the perspective synced
///   (default; otherwise the dispatch fails with a timeout error), or always,
///   reading the outcome with `Context::sync_results`.
/// - `trigger = true | false`: on a perspective whose strategy holds work
///   back (batch, scheduled, custom), `true` runs it now on the awaited
///   events' streams, on the waiting task, instead of waiting for its next
///   run (default `false`); the `SyncResult`'s `run` says `Triggered`. No
///   effect on inline and realtime perspectives.
///
/// A receptor that awaits runs detached (`PostDistributeDetached` unless
/// `#[fire_at]` says otherwise): `#[fire_at]` with an inline stage is a
/// compile error, since the wait would deadlock the flush.
///
/// Above `#[receptor]` it is a macro of its own (import it, or write its
/// path), which moves itself below `#[receptor]`; below, `#[receptor]` reads
/// it directly, under any path, and it needs no import.
///
/// ```text
/// use whizbang_core::{await_perspective_sync, receptor, Context, Receptor, Result};
///
/// #[await_perspective_sync(OrderViews, event_types = [OrderCreated], timeout_ms = 2000)]
/// #[await_perspective_sync(Stock, fire = always)]
/// #[await_perspective_sync(NightlyTotals, trigger = true)]
/// #[receptor]
/// impl Receptor<OrderCreated> for Invoicer {
///     async fn handle(&self, e: OrderCreated, cx: &mut Context) -> Result<()> {
///         // the order view includes `e` here
///     }
/// }
/// ```
#[proc_macro_attribute]
pub fn await_perspective_sync(args: TokenStream, item: TokenStream) -> TokenStream {
    lifecycle::expand_standalone(
        lifecycle::Helper::AwaitPerspectiveSync,
        args.into(),
        item.into(),
    )
    .into()
}
