//! `#[await_perspective_sync(P, event_types = [..], timeout_ms = .., fire = .., trigger = ..)]`:
//! the parser of one wait, and the `SyncRequirement` it becomes. The default
//! timeout is applied by `whizbang_core` (`timeout_ms: None`), not here.

use crate::attr::{self, Attr};
use crate::ctx::Ctxt;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, ExprLit, ExprUnary, Ident, Lit, Token, Type, TypePath, UnOp};

const AWAIT_KEYS: &[&str] = &["event_types", "timeout_ms", "fire", "trigger"];

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
    /// `timeout_ms = ..`; `None` takes core's default.
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) fire: Fire,
    /// `trigger = true`: run a held-back perspective now rather than wait
    /// for its strategy's next run.
    pub(crate) trigger: bool,
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
        let mut trigger = Attr::none(cx, "trigger");
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
                "trigger" => {
                    if input.is_empty() || input.peek(Token![,]) {
                        return Err(syn::Error::new(
                            key.span(),
                            "`trigger` takes a value: `trigger = true` or `trigger = false`",
                        ));
                    }
                    if let Some(on) = trigger_value(cx, &attr::value::<Expr>(input)?) {
                        trigger.set(key, on);
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
            timeout_ms: timeout_ms.get(),
            fire: fire.get().unwrap_or(Fire::OnSuccess),
            trigger: trigger.get().unwrap_or(false),
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
        let timeout = match self.timeout_ms {
            Some(ms) => {
                let ms = proc_macro2::Literal::u64_suffixed(ms);
                quote!(#krate::__private::Option::Some(#ms))
            }
            None => quote!(#krate::__private::Option::None),
        };
        let fire = match self.fire {
            Fire::OnSuccess => quote!(OnSuccess),
            Fire::Always => quote!(Always),
        };
        let trigger = self.trigger.then(|| quote!(.trigger(true)));
        quote! {
            #of(&[#(#names),*], #timeout, #krate::__private::SyncFire::#fire) #trigger
        }
    }
}

/// `trigger = true` or `trigger = false`, nothing else.
fn trigger_value(cx: &Ctxt, expr: &Expr) -> Option<bool> {
    if let Expr::Lit(ExprLit {
        lit: Lit::Bool(on), ..
    }) = expr
    {
        return Some(on.value);
    }
    cx.error_spanned_by(
        expr,
        "`trigger` must be `true` or `false`, as in `trigger = true`",
    );
    None
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
