//! `#[receptor]`: registers an `impl Receptor<M> for T` block.
//!
//! Parse (arguments and the impl header into a [`ReceptorModel`]; the method
//! bodies are never looked at), check (a concrete impl of `Receptor<M>`),
//! expand (the impl, without the `#[fire_at]` / `#[await_perspective_sync]`
//! it consumed, then the `Registered<M>` proof only this macro gives and one
//! `ReceptorRegistration`).

use crate::attr::{self, Attr};
use crate::ctx::{self, Ctxt};
use crate::lifecycle::{self, Lifecycle};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{GenericArgument, ItemImpl, PathArguments, Type};

const USAGE: &str = "#[receptor] goes on an `impl Receptor<M> for T` block";

/// `#[receptor(..)]` on `item`.
pub(crate) fn expand_receptor(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let options = ReceptorOptions::from_args(&cx, args);
    let Ok(mut item_impl) = syn::parse2::<ItemImpl>(item.clone()) else {
        cx.error_spanned_by(&item, USAGE);
        return emit_errors(lifecycle::strip_tokens(item), cx);
    };
    let model = ReceptorModel::from_ast(&cx, options, &item_impl);
    // The `Registered` proof goes out whenever the header is a `Receptor<M>`
    // impl, even with other errors: the user did write #[receptor], so the
    // "add #[receptor]" error would only mislead.
    let registered = model.as_ref().map(|m| m.expand_registered(&item_impl));
    let registration = match (model, registered) {
        (Some(model), Some(registered)) if cx.is_ok() => Ok(model.expand(&registered)),
        (_, registered) => Err(registered.map(|r| quote!(const _: () = { #r };))),
    };
    // The impl is emitted without `#[fire_at]` / `#[await_perspective_sync]`,
    // even when there are errors: nothing else would expand them.
    lifecycle::strip(&mut item_impl.attrs);
    match registration {
        Ok(registration) => quote!(#item_impl #registration),
        Err(registered) => emit_errors(quote!(#item_impl #registered), cx),
    }
}

fn emit_errors(item: TokenStream, cx: Ctxt) -> TokenStream {
    match cx.check() {
        Ok(()) => item,
        Err(err) => ctx::item_with_errors(item, &err),
    }
}

/// The macro's own arguments.
struct ReceptorOptions {
    krate: syn::Path,
}

impl ReceptorOptions {
    fn from_args(cx: &Ctxt, args: TokenStream) -> Self {
        let mut krate = Attr::none(cx, "crate");
        attr::parse_args(cx, args, &["crate"], |key, input| {
            krate.set(key, attr::value::<syn::Path>(input)?);
            Ok(())
        });
        ReceptorOptions {
            krate: krate.get().unwrap_or_else(attr::default_crate_path),
        }
    }
}

/// A checked `impl Receptor<M> for T`.
struct ReceptorModel<'a> {
    options: ReceptorOptions,
    /// `T`.
    receptor: &'a Type,
    /// `M`.
    message: &'a Type,
    /// `#[fire_at(..)]` and `#[await_perspective_sync(..)]` on the impl.
    lifecycle: Lifecycle,
}

impl<'a> ReceptorModel<'a> {
    fn from_ast(cx: &Ctxt, options: ReceptorOptions, item: &'a ItemImpl) -> Option<Self> {
        if !item.generics.params.is_empty() {
            cx.error_spanned_by(
                &item.generics,
                "generic receptors cannot be registered: inventory needs one concrete type; \
                 implement Receptor for a concrete type",
            );
        }
        // `#[fire_at(..)]` and `#[await_perspective_sync(..)]` below
        // `#[receptor]` are plain attributes of this impl; written above it,
        // they have moved themselves below it (see `lifecycle.rs`).
        let lifecycle = Lifecycle::from_attrs(cx, &item.attrs);
        let message = Self::message_type(cx, item)?;
        Some(ReceptorModel {
            options,
            receptor: &item.self_ty,
            message,
            lifecycle,
        })
    }

    /// `M` of `impl Receptor<M> for T`, with an error for anything else.
    fn message_type(cx: &Ctxt, item: &'a ItemImpl) -> Option<&'a Type> {
        let Some((bang, path, _)) = &item.trait_ else {
            let (impl_token, self_ty) = (item.impl_token, &item.self_ty);
            cx.error_spanned_by(
                quote!(#impl_token #self_ty),
                format!("{USAGE}, not on an inherent impl"),
            );
            return None;
        };
        if let Some(bang) = bang {
            cx.error_spanned_by(bang, format!("{USAGE}, not on a negative impl"));
            return None;
        }
        let Some(last) = path.segments.last().filter(|s| s.ident == "Receptor") else {
            cx.error_spanned_by(path, format!("{USAGE}; this impl is of another trait"));
            return None;
        };
        let mut types = match &last.arguments {
            PathArguments::AngleBracketed(args) => args
                .args
                .iter()
                .map(|arg| match arg {
                    GenericArgument::Type(ty) => Some(ty),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        if let (Some(Some(message)), true) = (types.pop(), types.is_empty()) {
            return Some(message);
        }
        cx.error_spanned_by(
            last,
            format!("{USAGE}: `Receptor` takes exactly one message type, `Receptor<M>`"),
        );
        None
    }

    /// `impl Registered<M> for T`: only `#[receptor]` implements this
    /// supertrait of `Receptor<M>`, so an impl without the attribute (which
    /// would never run) does not compile. It carries the impl's generics, so
    /// a generic receptor gets only the error that explains it.
    fn expand_registered(&self, item: &ItemImpl) -> TokenStream {
        let krate = &self.options.krate;
        let (receptor, message) = (self.receptor, self.message);
        let (impl_generics, _, where_clause) = item.generics.split_for_impl();
        quote_spanned! {receptor.span()=>
            impl #impl_generics #krate::__private::Registered<#message> for #receptor
                #where_clause {}
        }
    }

    /// The `Registered` proof and the `ReceptorRegistration`, in one `const _`.
    fn expand(&self, registered: &TokenStream) -> TokenStream {
        let krate = &self.options.krate;
        let receptor = self.receptor;
        let message = self.message;
        let type_name = attr::compact(receptor);
        let lifecycle = self.lifecycle.expand(krate);
        // Spanned on the receptor type: a missing `FromServices` lands there.
        let of = quote_spanned! {receptor.span()=>
            #krate::__private::ReceptorRegistration::of::<#receptor, #message>
        };
        quote! {
            const _: () = {
                #registered
                #krate::__private::inventory::submit! {
                    #of(#type_name, ::core::module_path!()) #lifecycle
                }
            };
        }
    }
}
