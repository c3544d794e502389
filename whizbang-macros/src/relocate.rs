//! Where `#[fire_at]` and `#[await_perspective_sync]` are written: which
//! attribute is which, moving one written above `#[receptor]` below it, and
//! stripping them once read.
//!
//! Written below `#[receptor]`, they are plain attributes of its input.
//! Written above it, they expand first as attribute macros of their own:
//! [`expand_standalone`] only moves them below `#[receptor]`, which expands
//! next and consumes them. Knows nothing of their arguments.

use crate::ctx;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::quote;
use syn::parse::{ParseStream, Parser};
use syn::{Attribute, Ident};

/// One of the attributes this module handles.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Helper {
    AwaitPerspectiveSync,
    FireAt,
}

impl Helper {
    fn name(self) -> &'static str {
        match self {
            Helper::AwaitPerspectiveSync => "await_perspective_sync",
            Helper::FireAt => "fire_at",
        }
    }

    /// Which helper `attr` is, by the last segment of its path (it may be
    /// written `fire_at`, `whizbang_core::fire_at`, `my_reexport::fire_at`..).
    pub(crate) fn of(attr: &Attribute) -> Option<Helper> {
        let last = attr.path().segments.last()?;
        if last.ident == "await_perspective_sync" {
            Some(Helper::AwaitPerspectiveSync)
        } else if last.ident == "fire_at" {
            Some(Helper::FireAt)
        } else {
            None
        }
    }
}

/// Whether `attr` is `#[receptor]`, under any path.
fn is_receptor(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "receptor")
}

// ---------------------------------------------------------------------------
// Standalone: the attribute written above `#[receptor]`.

/// `#[fire_at(..)]` or `#[await_perspective_sync(..)]` expanded on its own:
/// re-emits `item` with the attribute moved below `#[receptor]`, where the
/// receptor macro consumes it. The arguments are checked there, once.
///
/// Helpers above `#[receptor]` expand one by one, outermost first. To keep
/// the order they were written in, a moved attribute is marked with a leading
/// `::` (`#[::fire_at(..)]`, a path no one writes) and each goes after those
/// moved before it, ahead of the ones written below `#[receptor]`. The other
/// helpers still above stay there and expand themselves, so their imports
/// are used.
pub(crate) fn expand_standalone(
    helper: Helper,
    args: TokenStream,
    item: TokenStream,
) -> TokenStream {
    let usage = format!(
        "#[{}] goes on a `#[receptor] impl Receptor<M> for T` block",
        helper.name()
    );
    // The method bodies are not parsed: only the outer attributes.
    let Ok((attrs, rest)) = split_attrs(item.clone()) else {
        return ctx::item_with_errors(item, &syn::Error::new(Span::call_site(), usage));
    };
    let receptor_at = attrs.iter().position(is_receptor);
    let (Some(at), true) = (receptor_at, starts_an_impl(&rest)) else {
        // The attribute itself is dropped: it has nothing to attach to.
        let err = syn::Error::new(Span::call_site(), usage);
        return ctx::item_with_errors(quote!(#(#attrs)* #rest), &err);
    };
    let moved = attrs[at + 1..].iter().take_while(|a| is_moved(a)).count();
    let (before, after) = attrs.split_at(at + 1 + moved);
    let name = Ident::new(helper.name(), Span::call_site());
    let this = if args.is_empty() {
        quote!(#[::#name])
    } else {
        quote!(#[::#name(#args)])
    };
    quote!(#(#before)* #this #(#after)* #rest)
}

/// A helper moved below `#[receptor]` by [`expand_standalone`].
fn is_moved(attr: &Attribute) -> bool {
    let path = attr.path();
    path.leading_colon.is_some() && path.segments.len() == 1 && Helper::of(attr).is_some()
}

/// The outer attributes of an item, and the rest of its tokens unparsed.
fn split_attrs(item: TokenStream) -> syn::Result<(Vec<Attribute>, TokenStream)> {
    let split = |input: ParseStream<'_>| -> syn::Result<(Vec<Attribute>, TokenStream)> {
        Ok((input.call(Attribute::parse_outer)?, input.parse()?))
    };
    split.parse2(item)
}

/// `item` without its helper attributes, for an item `#[receptor]` could not
/// parse: nothing else would expand them.
pub(crate) fn strip_tokens(item: TokenStream) -> TokenStream {
    match split_attrs(item.clone()) {
        Ok((mut attrs, rest)) => {
            strip(&mut attrs);
            quote!(#(#attrs)* #rest)
        }
        Err(_) => item,
    }
}

/// Whether `tokens` start with `impl` (or `unsafe impl`).
fn starts_an_impl(tokens: &TokenStream) -> bool {
    let mut iter = tokens.clone().into_iter();
    loop {
        match iter.next() {
            Some(TokenTree::Ident(ident)) if ident == "unsafe" || ident == "default" => {}
            Some(TokenTree::Ident(ident)) => return ident == "impl",
            _ => return false,
        }
    }
}

/// Removes the helper attributes from `attrs`: once `#[receptor]` has read
/// them, nothing would expand them.
pub(crate) fn strip(attrs: &mut Vec<Attribute>) {
    attrs.retain(|attr| Helper::of(attr).is_none());
}
