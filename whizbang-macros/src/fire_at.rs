//! `#[fire_at(Stage)]`: the stage a receptor fires at.
//!
//! The stage's name is not checked here: it is emitted as a path to
//! `whizbang_core`'s stage constants, spanned on the user's word, so rustc
//! rejects an unknown stage there (and suggests the near one). The rules of
//! stages live in `whizbang_core::stage` only.

use crate::ctx::Ctxt;
use proc_macro2::TokenStream;
use quote::quote_spanned;
use syn::parse::{ParseStream, Parser};
use syn::{Attribute, Ident};

/// `#[fire_at(Stage)]`: the stage, as the user wrote it.
pub(crate) struct FireAt {
    pub(crate) stage: Ident,
}

impl FireAt {
    /// Parses one `#[fire_at(..)]`; `None` (with an error) when it is wrong.
    pub(crate) fn from_attr(cx: &Ctxt, attr: &Attribute) -> Option<FireAt> {
        let expected = "expected one lifecycle stage, as in `#[fire_at(PostPerspectiveDetached)]`";
        let syn::Meta::List(list) = &attr.meta else {
            cx.error_spanned_by(attr, expected);
            return None;
        };
        let parser = |input: ParseStream<'_>| -> syn::Result<Ident> {
            let stage: Ident = input.parse()?;
            if !input.is_empty() {
                return Err(input.error(expected));
            }
            Ok(stage)
        };
        let stage = match parser.parse2(list.tokens.clone()) {
            Ok(stage) => stage,
            Err(err) => {
                let span = if list.tokens.is_empty() {
                    list.delimiter.span().join()
                } else {
                    err.span()
                };
                cx.error_at(span, expected);
                return None;
            }
        };
        Some(FireAt { stage })
    }

    /// The stage's value, spanned on the user's word: an unknown name fails
    /// to resolve there. When the receptor awaits sync, the stage goes through
    /// core's `awaiting_at` in a `const` block of its own, which fails the build
    /// for an inline stage, pointing at the stage.
    pub(crate) fn expand(&self, krate: &syn::Path, awaits: bool) -> TokenStream {
        let stage = &self.stage;
        let span = stage.span();
        let value = quote_spanned! {span=> #krate::__private::stage::#stage };
        if awaits {
            quote_spanned! {span=> const { #krate::__private::stage::awaiting_at(#value) } }
        } else {
            value
        }
    }
}
