//! `strategy = ..` of `#[perspective]`: `realtime`, `batch(n, "50ms")`,
//! `scheduled("5s")`, or a path to a user's `SyncStrategy` value. Durations
//! are parsed here, at compile time; a bad one is an error spanned on its
//! literal.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::ParseStream;
use syn::spanned::Spanned;
use syn::{Expr, ExprCall, ExprLit, Lit, Token};

const EXPECTED: &str = "expected `strategy = realtime`, `strategy = batch(100, \"50ms\")`, \
                        `strategy = scheduled(\"5s\")`, or a path to a value implementing \
                        `SyncStrategy` (`strategy = my::STRATEGY`)";

/// A checked strategy argument.
pub(crate) struct Strategy {
    kind: Kind,
    /// Where it was written (errors about it land here).
    pub(crate) span: Span,
}

enum Kind {
    Realtime,
    Batch { max_events: u32, max_wait_ns: u64 },
    Scheduled { interval_ns: u64 },
    Custom(syn::Path),
}

impl Strategy {
    /// Parses `= strategy`.
    pub(crate) fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        input.parse::<Token![=]>()?;
        let expr: Expr = input.parse()?;
        let span = expr.span();
        let kind = match &expr {
            Expr::Path(p) if p.qself.is_none() && p.path.is_ident("realtime") => Kind::Realtime,
            Expr::Path(p) if p.qself.is_none() => Kind::Custom(p.path.clone()),
            Expr::Call(call) => builtin(call)?,
            _ => return Err(syn::Error::new(span, EXPECTED)),
        };
        Ok(Strategy { kind, span })
    }

    /// The `&'static dyn SyncStrategy` expression; `p` is the runtime's
    /// `__private` path.
    pub(crate) fn expand(&self, p: &TokenStream) -> TokenStream {
        match &self.kind {
            Kind::Realtime => quote!(&#p::Realtime),
            Kind::Batch {
                max_events,
                max_wait_ns,
            } => quote! {
                &#p::Batch {
                    max_events: #max_events,
                    max_wait: #p::Duration::from_nanos(#max_wait_ns),
                }
            },
            Kind::Scheduled { interval_ns } => quote! {
                &#p::Scheduled { interval: #p::Duration::from_nanos(#interval_ns) }
            },
            // Spanned on the user's path: a value that is not a strategy
            // is reported there.
            Kind::Custom(path) => quote_spanned!(path.span()=> &#path),
        }
    }
}

/// `batch(n, "d")` or `scheduled("d")`.
fn builtin(call: &ExprCall) -> syn::Result<Kind> {
    let name = match &*call.func {
        Expr::Path(p) if p.qself.is_none() => p.path.get_ident().map(ToString::to_string),
        _ => None,
    };
    let args: Vec<&Expr> = call.args.iter().collect();
    match (name.as_deref(), &args[..]) {
        (Some("batch"), [n, wait]) => {
            let max_events = int_lit(n)?;
            let max_wait_ns = duration_lit(wait)?;
            Ok(Kind::Batch {
                max_events,
                max_wait_ns,
            })
        }
        (Some("batch"), _) => Err(syn::Error::new(
            call.span(),
            "`batch` takes two arguments: the most events per run and the longest wait, \
             as in `batch(100, \"50ms\")`",
        )),
        (Some("scheduled"), [interval]) => {
            let interval_ns = duration_lit(interval)?;
            if interval_ns == 0 {
                return Err(syn::Error::new(
                    interval.span(),
                    "a schedule's interval must be above zero (a zero interval is `realtime`)",
                ));
            }
            Ok(Kind::Scheduled { interval_ns })
        }
        (Some("scheduled"), _) => Err(syn::Error::new(
            call.span(),
            "`scheduled` takes one argument, the interval, as in `scheduled(\"5s\")`",
        )),
        _ => Err(syn::Error::new(call.span(), EXPECTED)),
    }
}

/// A positive integer literal that fits a `u32`.
fn int_lit(expr: &Expr) -> syn::Result<u32> {
    let err = || {
        syn::Error::new(
            expr.span(),
            "the batch size must be an integer literal from 1 to 4294967295, as in `batch(100, \"50ms\")`",
        )
    };
    let Expr::Lit(ExprLit {
        lit: Lit::Int(int), ..
    }) = expr
    else {
        return Err(err());
    };
    match int.base10_parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(err()),
    }
}

/// A duration string literal (`"50ms"`, `"5s"`, ..) in nanoseconds.
fn duration_lit(expr: &Expr) -> syn::Result<u64> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(s), ..
    }) = expr
    else {
        return Err(syn::Error::new(
            expr.span(),
            "expected a duration string such as \"50ms\", \"5s\", \"2m\" or \"1h\"",
        ));
    };
    parse_duration(&s.value()).map_err(|why| syn::Error::new(s.span(), why))
}

/// `"<digits><unit>"` with unit `us`, `ms`, `s`, `m` or `h`, in nanoseconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let scale: u64 = match unit.trim() {
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => {
            return Err(format!(
                "`{text}` is not a duration: write a whole number and a unit (us, ms, s, m \
                 or h), as in \"50ms\" or \"5s\""
            ))
        }
    };
    if digits.is_empty() {
        return Err(format!(
            "`{text}` is not a duration: the number is missing, as in \"50ms\""
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("the duration `{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_parse_with_their_unit_and_bad_ones_say_why() {
        assert_eq!(parse_duration("50ms"), Ok(50_000_000));
        assert_eq!(parse_duration("5s"), Ok(5_000_000_000));
        assert_eq!(parse_duration("2m"), Ok(120_000_000_000));
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("ms")
            .unwrap_err()
            .contains("number is missing"));
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("99999999999h")
            .unwrap_err()
            .contains("too long"));
    }
}
