//! Argument parsing shared by every macro: `key = value, ..` lists, one
//! [`Attr`] per key that rejects duplicates, and unknown keys that name the
//! keys that are allowed. Errors go to the [`Ctxt`]; parsing carries on with
//! the next argument so every mistake is reported at once.

use crate::ctx::Ctxt;
use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Ident, LitStr, Token};

/// One argument of a macro: set at most once.
pub(crate) struct Attr<'c, T> {
    cx: &'c Ctxt,
    name: &'static str,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    pub(crate) fn none(cx: &'c Ctxt, name: &'static str) -> Self {
        Attr {
            cx,
            name,
            value: None,
        }
    }

    /// Sets the value; a second set is an error spanned on `obj`.
    pub(crate) fn set<A: ToTokens>(&mut self, obj: A, value: T) {
        if self.value.is_some() {
            self.cx
                .error_spanned_by(obj, format!("duplicate `{}` argument", self.name));
        } else {
            self.value = Some(value);
        }
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }
}

/// The path generated code reaches the runtime through, unless overridden
/// with `crate = path`.
pub(crate) fn default_crate_path() -> syn::Path {
    syn::parse_quote!(::whizbang_core)
}

/// Parses `key = value, ..` from `tokens`. `on_key` is called for each
/// allowed key with the input positioned after the key; it parses the rest of
/// the argument (usually with [`value`]).
pub(crate) fn parse_args(
    cx: &Ctxt,
    tokens: TokenStream,
    allowed: &[&str],
    mut on_key: impl FnMut(&Ident, ParseStream<'_>) -> syn::Result<()>,
) {
    let parser = |input: ParseStream<'_>| -> syn::Result<()> {
        while !input.is_empty() {
            // `crate` and `async` are keywords: accept any identifier.
            let key = input.call(Ident::parse_any)?;
            let name = key.to_string();
            if allowed.contains(&name.as_str()) {
                if let Err(err) = on_key(&key, input) {
                    cx.syn_error(err);
                    skip_to_comma(input);
                }
            } else {
                cx.error_spanned_by(
                    &key,
                    format!(
                        "unknown argument `{name}`; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
                skip_to_comma(input);
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(())
    };
    if let Err(err) = parser.parse2(tokens) {
        cx.syn_error(err);
    }
}

/// Parses `= value`.
pub(crate) fn value<T: syn::parse::Parse>(input: ParseStream<'_>) -> syn::Result<T> {
    input.parse::<Token![=]>()?;
    input.parse()
}

/// Parses `= "non-empty string"` for a `name` argument.
pub(crate) fn name_value(input: ParseStream<'_>) -> syn::Result<LitStr> {
    let lit: LitStr = value(input)?;
    if lit.value().trim().is_empty() {
        return Err(syn::Error::new(lit.span(), "`name` must not be empty"));
    }
    Ok(lit)
}

/// Skips the rest of a malformed argument, up to the next top-level comma.
fn skip_to_comma(input: ParseStream<'_>) {
    let skipped = input.step(|cursor| {
        let mut rest = *cursor;
        let mut depth = 0usize;
        while let Some((tt, next)) = rest.token_tree() {
            if let TokenTree::Punct(p) = &tt {
                match p.as_char() {
                    ',' if depth == 0 => return Ok(((), rest)),
                    '<' => depth += 1,
                    '>' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            rest = next;
        }
        Ok(((), rest))
    });
    // `step` only fails when the closure does, and it never does.
    drop(skipped);
}

/// Parses every `#[helper(..)]` attribute in `attrs` with [`parse_args`].
pub(crate) fn parse_helper_attrs(
    cx: &Ctxt,
    attrs: &[syn::Attribute],
    helper: &str,
    allowed: &[&str],
    mut on_key: impl FnMut(&Ident, ParseStream<'_>) -> syn::Result<()>,
) {
    for attr in attrs.iter().filter(|a| a.path().is_ident(helper)) {
        match &attr.meta {
            syn::Meta::List(list) => parse_args(cx, list.tokens.clone(), allowed, &mut on_key),
            _ => cx.error_spanned_by(
                attr,
                format!(
                    "expected `#[{helper}(..)]` with arguments, one of: {}",
                    allowed.join(", ")
                ),
            ),
        }
    }
}

/// A type or path as compact text, for names and registrations:
/// `a :: B < C >` becomes `a::B<C>`.
pub(crate) fn compact(tokens: &impl ToTokens) -> String {
    let text = tokens.to_token_stream().to_string();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let prev = out.chars().last();
            let next = chars.peek().copied();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            if (word(prev) && word(next)) || prev == Some(',') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out
}
