//! `#[fire_at(Stage)]` and `#[await_perspective_sync(P, ..)]`: when a
//! receptor runs, and the perspectives it waits for first.
//!
//! Both belong to a `#[receptor]` impl, which parses them into its model
//! (see `receptor.rs`). Written below `#[receptor]`, they are plain
//! attributes of its input. Written above it, they expand first as attribute
//! macros of their own: [`expand_standalone`] only moves them below
//! `#[receptor]`, which expands next and consumes them.

use crate::attr::{self, Attr};
use crate::ctx::{self, Ctxt};
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, ExprUnary, Ident, Lit, Token, Type, TypePath, UnOp};

/// The lifecycle stages, as named by `whizbang_core::LifecycleStage`.
const STAGES: [&str; 18] = [
    "PreDistributeInline",
    "PreDistributeDetached",
    "PostDistributeInline",
    "PostDistributeDetached",
    "PreOutboxInline",
    "PreOutboxDetached",
    "PostOutboxInline",
    "PostOutboxDetached",
    "PreInboxInline",
    "PreInboxDetached",
    "PostInboxInline",
    "PostInboxDetached",
    "PrePerspectiveInline",
    "PrePerspectiveDetached",
    "PostPerspectiveInline",
    "PostPerspectiveDetached",
    "PostAllPerspectivesInline",
    "PostAllPerspectivesDetached",
];

/// Timeout of an `#[await_perspective_sync]` without `timeout_ms`.
const DEFAULT_TIMEOUT_MS: u64 = 5000;

const AWAIT_KEYS: &[&str] = &["event_types", "timeout_ms", "fire"];

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

// ---------------------------------------------------------------------------
// Parsed by `#[receptor]`.

/// `#[fire_at(Stage)]`: a stage checked against [`STAGES`].
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
        let name = stage.to_string();
        if STAGES.contains(&name.as_str()) {
            Some(FireAt { stage })
        } else {
            cx.error_spanned_by(&stage, unknown_stage(&name));
            None
        }
    }

    pub(crate) fn is_inline(&self) -> bool {
        self.stage.to_string().ends_with("Inline")
    }

    /// The `Detached` stage at the same point.
    pub(crate) fn detached_twin(&self) -> String {
        let name = self.stage.to_string();
        match name.strip_suffix("Inline") {
            Some(point) => format!("{point}Detached"),
            None => name,
        }
    }
}

/// The error for an unknown stage: the stage meant when it is close, all of
/// them otherwise.
fn unknown_stage(name: &str) -> String {
    let inline = format!("{name}Inline");
    if STAGES.contains(&inline.as_str()) {
        return format!(
            "`{name}` needs a mode: `{name}Inline` (in the flow, must not wait) \
             or `{name}Detached` (on its own task)"
        );
    }
    let lower = name.to_lowercase();
    let closest = STAGES
        .iter()
        .map(|stage| (edit_distance(&lower, &stage.to_lowercase()), *stage))
        .min();
    match closest {
        Some((distance, stage)) if distance <= 3 => {
            format!("unknown lifecycle stage `{name}`; did you mean `{stage}`?")
        }
        _ => format!(
            "unknown lifecycle stage `{name}`; expected one of: {}",
            STAGES.join(", ")
        ),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `fire = ..` of `#[await_perspective_sync]`.
#[derive(Clone, Copy)]
pub(crate) enum Fire {
    OnSuccess,
    Always,
}

/// One `#[await_perspective_sync(P, ..)]`.
pub(crate) struct AwaitSync {
    /// `P`.
    pub(crate) perspective: TypePath,
    /// `event_types = [..]`; empty = the incoming event itself.
    pub(crate) event_types: Vec<Type>,
    pub(crate) timeout_ms: u64,
    pub(crate) fire: Fire,
}

impl AwaitSync {
    /// Parses one `#[await_perspective_sync(..)]`; `None` (with errors) when
    /// it is wrong. Every wrong argument is reported, not only the first.
    pub(crate) fn from_attr(cx: &Ctxt, attr: &Attribute) -> Option<AwaitSync> {
        let expected = "expected the perspective to await first, as in \
                        `#[await_perspective_sync(OrderViews, timeout_ms = 2000)]`";
        let syn::Meta::List(list) = &attr.meta else {
            cx.error_spanned_by(attr, expected);
            return None;
        };
        if list.tokens.is_empty() {
            cx.error_at(list.delimiter.span().join(), expected);
            return None;
        }
        let errors_before = cx.error_count();
        let mut event_types = Attr::none(cx, "event_types");
        let mut timeout_ms = Attr::none(cx, "timeout_ms");
        let mut fire = Attr::none(cx, "fire");
        let parser = |input: ParseStream<'_>| -> syn::Result<(TypePath, TokenStream)> {
            if input.peek(Ident) && input.peek2(Token![=]) {
                return Err(input.error(expected));
            }
            let perspective: TypePath = input.parse()?;
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
            Ok((perspective, input.parse()?))
        };
        let (perspective, rest) = match parser.parse2(list.tokens.clone()) {
            Ok(parsed) => parsed,
            Err(err) => {
                cx.syn_error(err);
                return None;
            }
        };
        attr::parse_args(cx, rest, AWAIT_KEYS, |key, input| {
            match key.to_string().as_str() {
                "event_types" => {
                    input.parse::<Token![=]>()?;
                    let content;
                    syn::bracketed!(content in input);
                    let types = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
                    event_types.set(key, types.into_iter().collect::<Vec<_>>());
                }
                "timeout_ms" => {
                    if let Some(ms) = timeout(cx, &attr::value::<Expr>(input)?) {
                        timeout_ms.set(key, ms);
                    }
                }
                _ => {
                    let value: Ident = attr::value(input)?;
                    let parsed = if value == "on_success" {
                        Fire::OnSuccess
                    } else if value == "always" {
                        Fire::Always
                    } else {
                        return Err(syn::Error::new(
                            value.span(),
                            format!(
                                "unknown `fire` value `{value}`; expected on_success or always"
                            ),
                        ));
                    };
                    fire.set(key, parsed);
                }
            }
            Ok(())
        });
        let parsed = AwaitSync {
            perspective,
            event_types: event_types.get().unwrap_or_default(),
            timeout_ms: timeout_ms.get().unwrap_or(DEFAULT_TIMEOUT_MS),
            fire: fire.get().unwrap_or(Fire::OnSuccess),
        };
        (cx.error_count() == errors_before).then_some(parsed)
    }

    /// `SyncRequirement::of::<P>(..)`.
    pub(crate) fn expand(&self, krate: &syn::Path) -> TokenStream {
        let perspective = &self.perspective;
        // Spanned on the user's types: a type that is not a perspective (or
        // not a message) is reported there.
        let of = quote_spanned! {perspective.span()=>
            #krate::__private::SyncRequirement::of::<#perspective>
        };
        let names = self.event_types.iter().map(|event| {
            quote_spanned! {event.span()=>
                <#event as #krate::__private::Message>::NAME
            }
        });
        let timeout = proc_macro2::Literal::u64_suffixed(self.timeout_ms);
        let fire = match self.fire {
            Fire::OnSuccess => quote!(OnSuccess),
            Fire::Always => quote!(Always),
        };
        quote! {
            #of(&[#(#names),*], #timeout, #krate::__private::SyncFire::#fire)
        }
    }
}

/// `timeout_ms = <integer literal>`, never negative.
fn timeout(cx: &Ctxt, expr: &Expr) -> Option<u64> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(int), ..
        }) => match int.base10_parse::<u64>() {
            Ok(ms) => Some(ms),
            Err(err) => {
                cx.syn_error(err);
                None
            }
        },
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => {
            cx.error_spanned_by(
                expr,
                "timeout_ms cannot be negative: use 0 to check once without waiting",
            );
            None
        }
        _ => {
            cx.error_spanned_by(
                expr,
                "timeout_ms must be an integer literal of milliseconds, as in `timeout_ms = 2000`",
            );
            None
        }
    }
}

/// Removes the helper attributes from `attrs`: once `#[receptor]` has read
/// them, nothing would expand them.
pub(crate) fn strip(attrs: &mut Vec<Attribute>) {
    attrs.retain(|attr| Helper::of(attr).is_none());
}

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
        lifecycle.check(cx);
        lifecycle
    }

    /// Waiting from an inline stage would block the flush it waits for.
    fn check(&self, cx: &Ctxt) {
        if let (Some(fire_at), false) = (&self.fire_at, self.awaits.is_empty()) {
            if fire_at.is_inline() {
                cx.error_spanned_by(
                    &fire_at.stage,
                    format!(
                        "waiting for a perspective from an inline stage would deadlock the flush; \
                         use `{}` instead",
                        fire_at.detached_twin()
                    ),
                );
            }
        }
    }

    /// `.fire_at(..)` and `.awaiting(&[..])`, appended to the registration.
    pub(crate) fn expand(&self, krate: &syn::Path) -> TokenStream {
        let mut out = TokenStream::new();
        if let Some(fire_at) = &self.fire_at {
            let stage = &fire_at.stage;
            out.extend(quote! {
                .fire_at(#krate::__private::LifecycleStage::#stage)
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
