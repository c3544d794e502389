//! `#[fire_at(Stage)]` and `#[await_perspective_sync(P, ..)]`: when a
//! receptor runs, and the perspectives it waits for first.
//!
//! Both belong to a `#[receptor]` impl, which parses them into its
//! [`Lifecycle`] (see `receptor.rs`). Where they may be written is
//! `relocate.rs`; each one's arguments are `fire_at.rs` and `await_sync.rs`.

use crate::await_sync::AwaitSync;
use crate::ctx::Ctxt;
use crate::fire_at::FireAt;
pub(crate) use crate::relocate::{expand_standalone, strip, strip_tokens, Helper};
use proc_macro2::TokenStream;
use quote::quote;
use syn::Attribute;

/// The `#[fire_at]` and `#[await_perspective_sync]` of one receptor impl.
#[derive(Default)]
pub(crate) struct Lifecycle {
    pub(crate) fire_at: Option<FireAt>,
    pub(crate) awaits: Vec<AwaitSync>,
}

impl Lifecycle {
    /// Parses the helper attributes among `attrs`, in the order written.
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Lifecycle {
        let mut lifecycle = Lifecycle::default();
        let mut seen_fire_at = false;
        for attr in attrs {
            match Helper::of(attr) {
                None => {}
                Some(Helper::FireAt) if seen_fire_at => {
                    cx.error_spanned_by(attr, "duplicate #[fire_at]: a receptor fires at one stage")
                }
                Some(Helper::FireAt) => {
                    seen_fire_at = true;
                    lifecycle.fire_at = FireAt::from_attr(cx, attr);
                }
                Some(Helper::AwaitPerspectiveSync) => {
                    lifecycle.awaits.extend(AwaitSync::from_attr(cx, attr));
                }
            }
        }
        lifecycle
    }

    /// `.fire_at(..)` and `.awaiting(&[..])`, appended to the registration.
    pub(crate) fn expand(&self, krate: &syn::Path) -> TokenStream {
        let mut out = TokenStream::new();
        if let Some(fire_at) = &self.fire_at {
            let stage = fire_at.expand(krate, !self.awaits.is_empty());
            out.extend(quote! {
                .fire_at(#stage)
            });
        }
        if !self.awaits.is_empty() {
            let awaits = self.awaits.iter().map(|a| a.expand(krate));
            out.extend(quote! {
                .awaiting(&[#(#awaits),*])
            });
        }
        out
    }
}
