//! `#[perspective(model = M, ..)]`: turns an inherent impl of `(&mut M, &E)`
//! methods into a `Perspective` that routes each event type to its method.
//!
//! Parse (arguments and method signatures into a [`PerspectiveModel`]; the
//! method bodies are never looked at), check (one method per event type, each
//! taking the model and an event), expand (the impl, the `Perspective` impl
//! and one `PerspectiveRegistration`).

use crate::attr::{self, Attr};
use crate::ctx::{self, Ctxt};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, Type};

const USAGE: &str = "#[perspective(model = M)] goes on an inherent `impl P { .. }` block";

/// `#[perspective(..)]` on `item`.
pub(crate) fn expand_perspective(args: TokenStream, item: TokenStream) -> TokenStream {
    let cx = Ctxt::new();
    let options = PerspectiveOptions::from_args(&cx, args);
    let Ok(mut item_impl) = syn::parse2::<ItemImpl>(item.clone()) else {
        cx.error_spanned_by(&item, USAGE);
        return match cx.check() {
            Ok(()) => item,
            Err(err) => ctx::item_with_errors(item, &err),
        };
    };
    let mut skipped = take_skip_attrs(&cx, &mut item_impl);
    let mut options = options;
    // The bulk hook, when a method of the impl, is not an apply method:
    // `bulk = f` names the impl's `f` when it has one, else a function `f`
    // in scope.
    if let Some(path) = &mut options.bulk {
        if let Some(ident) = path.get_ident().cloned() {
            if has_method(&item_impl, &ident) {
                *path = syn::parse_quote_spanned!(ident.span()=> Self::#ident);
            }
        }
        if let Some(method) = bulk_method(path) {
            skipped.push(method.clone());
        }
    }
    let model = PerspectiveModel::from_ast(&cx, options, &item_impl, &skipped);
    match (cx.check(), model) {
        (Ok(()), Some(model)) => {
            let generated = model.expand();
            quote!(#item_impl #generated)
        }
        (Err(err), _) => ctx::item_with_errors(&item_impl, &err),
        (Ok(()), None) => item_impl.into_token_stream(),
    }
}

/// Inline or async.
#[derive(Clone, Copy)]
enum Mode {
    Inline,
    Async,
}

/// The macro's own arguments.
struct PerspectiveOptions {
    model: Option<Type>,
    name: Option<syn::LitStr>,
    mode: Mode,
    /// `version = N` (N >= 1): bumped when the apply code changes.
    version: Option<syn::LitInt>,
    /// `key = field`: a keyed (multi-stream) perspective.
    key: Option<Ident>,
    /// `strategy = ..`, checked (async perspectives only).
    strategy: Option<crate::strategy::Strategy>,
    /// `bulk = f` (a method of the impl) or `bulk = path::to_fn`: the bulk
    /// apply hook.
    bulk: Option<syn::Path>,
    krate: syn::Path,
}

impl PerspectiveOptions {
    fn from_args(cx: &Ctxt, args: TokenStream) -> Self {
        let mut model = Attr::none(cx, "model");
        let mut name = Attr::none(cx, "name");
        let mut mode = Attr::none(cx, "mode");
        let mut krate = Attr::none(cx, "crate");
        let mut version = Attr::none(cx, "version");
        let mut model_key = Attr::none(cx, "key");
        let mut strategy = Attr::none(cx, "strategy");
        let mut bulk = Attr::none(cx, "bulk");
        attr::parse_args(
            cx,
            args,
            &[
                "model", "name", "mode", "version", "key", "strategy", "bulk", "crate",
            ],
            |key, input| {
                if key == "model" {
                    model.set(key, attr::value::<Type>(input)?);
                } else if key == "name" {
                    name.set(key, attr::name_value(input)?);
                } else if key == "mode" {
                    input.parse::<syn::Token![=]>()?;
                    let value = input.call(Ident::parse_any)?;
                    let parsed = match value.to_string().as_str() {
                        "inline" => Mode::Inline,
                        "async" => Mode::Async,
                        _ => {
                            return Err(syn::Error::new(
                                value.span(),
                                "expected `mode = inline` or `mode = async`",
                            ))
                        }
                    };
                    mode.set(key, parsed);
                } else if key == "version" {
                    let lit = attr::value::<syn::LitInt>(input)?;
                    match lit.base10_parse::<u32>() {
                        Ok(v) if v >= 1 => version.set(key, lit),
                        _ => {
                            return Err(syn::Error::new(
                                lit.span(),
                                "expected `version = N` with N a whole number from 1 to 4294967295",
                            ))
                        }
                    }
                } else if key == "key" {
                    input.parse::<syn::Token![=]>()?;
                    let field = input.call(Ident::parse_any)?;
                    model_key.set(key, field);
                } else if key == "strategy" {
                    strategy.set(key, crate::strategy::Strategy::parse(input)?);
                } else if key == "bulk" {
                    bulk.set(key, attr::value::<syn::Path>(input)?);
                } else {
                    krate.set(key, attr::value::<syn::Path>(input)?);
                }
                Ok(())
            },
        );
        let model = model.get();
        if model.is_none() {
            cx.error_at(
                Span::call_site(),
                "#[perspective] needs `model = YourModel`: the read model its methods fold events into",
            );
        }
        let mode = mode.get().unwrap_or(Mode::Async);
        let key = model_key.get();
        if let (Some(field), Mode::Inline) = (&key, mode) {
            cx.error_at(
                field.span(),
                "a keyed perspective (`key = ..`) is applied in the store's global order by the \
                 runner: it cannot be `mode = inline`; remove `mode = inline`",
            );
        }
        let strategy = strategy.get();
        if let (Mode::Inline, Some(strategy)) = (mode, &strategy) {
            cx.error_at(
                strategy.span,
                "a strategy applies to async perspectives (the runner's schedule): an inline \
                 perspective applies with the append; remove `strategy` or `mode = inline`",
            );
        }
        let bulk = bulk.get();
        if let (Some(path), Mode::Inline) = (&bulk, mode) {
            cx.error_spanned_by(
                path,
                "a bulk hook (`bulk = ..`) runs over the runner's batches: an inline perspective \
                 applies inside the append's transaction, where no hook may run; remove `bulk` \
                 or `mode = inline`",
            );
        }
        PerspectiveOptions {
            bulk,
            model,
            name: name.get(),
            mode,
            version: version.get(),
            key,
            strategy,
            krate: krate.get().unwrap_or_else(attr::default_crate_path),
        }
    }
}

/// The method of the impl a `bulk = Self::f` path names.
fn bulk_method(path: &syn::Path) -> Option<&Ident> {
    let segments: Vec<&syn::PathSegment> = path.segments.iter().collect();
    match segments.as_slice() {
        [this, f] if this.ident == "Self" && path.leading_colon.is_none() => Some(&f.ident),
        _ => None,
    }
}

/// Whether the impl has a method named `ident`.
fn has_method(item: &ItemImpl, ident: &Ident) -> bool {
    item.items
        .iter()
        .any(|i| matches!(i, ImplItem::Fn(f) if f.sig.ident == *ident))
}

/// Removes `#[perspective(skip)]` from methods (it is not a macro of its own)
/// and returns the names of the methods that had it.
fn take_skip_attrs(cx: &Ctxt, item: &mut ItemImpl) -> Vec<Ident> {
    let mut skipped = Vec::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        let before = method.attrs.len();
        method.attrs.retain(|attr| {
            if !attr.path().is_ident("perspective") {
                return true;
            }
            let is_skip = matches!(&attr.meta, syn::Meta::List(list)
                if list.tokens.to_string() == "skip");
            if !is_skip {
                cx.error_spanned_by(
                    attr,
                    "on a method inside a perspective, only #[perspective(skip)] is allowed",
                );
            }
            false
        });
        if method.attrs.len() != before {
            skipped.push(method.sig.ident.clone());
        }
    }
    skipped
}

/// One routed event: `fn method(&mut Model, &Event)`.
struct Route<'a> {
    method: &'a Ident,
    event: &'a Type,
}

/// A checked perspective.
struct PerspectiveModel<'a> {
    options: PerspectiveOptions,
    model: Type,
    self_ty: &'a Type,
    name: String,
    routes: Vec<Route<'a>>,
}

impl<'a> PerspectiveModel<'a> {
    fn from_ast(
        cx: &Ctxt,
        options: PerspectiveOptions,
        item: &'a ItemImpl,
        skipped: &[Ident],
    ) -> Option<Self> {
        if let Some((_, path, _)) = &item.trait_ {
            cx.error_spanned_by(path, format!("{USAGE}, not on a trait impl"));
        }
        if !item.generics.params.is_empty() {
            cx.error_spanned_by(
                &item.generics,
                "generic perspectives cannot be registered: inventory needs one concrete type",
            );
        }
        let type_ident = match &*item.self_ty {
            Type::Path(ty) if ty.qself.is_none() => ty.path.segments.last().map(|s| &s.ident),
            _ => None,
        };
        if type_ident.is_none() {
            cx.error_spanned_by(&item.self_ty, format!("{USAGE}: `P` must be a named type"));
        }
        let model_text = options.model.as_ref().map(attr::compact);

        let mut routes: Vec<Route<'a>> = Vec::new();
        for impl_item in &item.items {
            let ImplItem::Fn(method) = impl_item else {
                continue;
            };
            if skipped.contains(&method.sig.ident) {
                continue;
            }
            let Some(route) = check_method(cx, method, model_text.as_deref()) else {
                continue;
            };
            let event_text = attr::compact(route.event);
            if let Some(first) = routes.iter().find(|r| attr::compact(r.event) == event_text) {
                cx.error_spanned_by(
                    route.event,
                    format!(
                        "event `{event_text}` is already handled by `{}`: \
                         a perspective has one method per event type",
                        first.method
                    ),
                );
                continue;
            }
            routes.push(route);
        }

        let type_ident = type_ident?;
        if routes.is_empty() && cx.is_ok() {
            cx.error_spanned_by(
                &item.self_ty,
                format!(
                    "perspective `{type_ident}` handles no events: add a method \
                     `fn(&mut Model, &Event)` for each event type it folds"
                ),
            );
        }
        let name = options
            .name
            .as_ref()
            .map_or_else(|| type_ident.to_string(), syn::LitStr::value);
        Some(PerspectiveModel {
            model: options.model.clone()?,
            options,
            self_ty: &item.self_ty,
            name,
            routes,
        })
    }

    fn expand(&self) -> TokenStream {
        let PerspectiveModel {
            options,
            model,
            self_ty,
            name,
            routes,
        } = self;
        let krate = &options.krate;
        let p = quote!(#krate::__private);
        let mode = match options.mode {
            Mode::Inline => quote!(#p::PerspectiveMode::Inline),
            Mode::Async => quote!(#p::PerspectiveMode::Async),
        };
        // Spanned on the user's types: a non-event lands on the method's argument.
        let names = routes.iter().map(
            |Route { event, .. }| quote_spanned!(event.span()=> <#event as #p::Message>::NAME),
        );
        let type_ids = routes
            .iter()
            .map(|Route { event, .. }| quote_spanned!(event.span()=> #p::TypeId::of::<#event>()));
        // Build cost: per route only a name comparison and a call; decoding
        // is `event_payload::<E>`, generic over the event type alone.
        let applies = routes.iter().map(|Route { method, event }| {
            let name = quote_spanned!(event.span()=> <#event as #p::Message>::NAME);
            let payload = quote_spanned!(event.span()=> #p::event_payload::<#event>(event));
            let call = quote_spanned! {method.span()=>
                #p::ApplyOutput::into_model_op(Self::#method(model, &payload))
            };
            quote! {
                if event.event_type == #name {
                    return #p::applied_op(match #payload {
                        #p::Result::Ok(payload) => #call,
                        #p::Result::Err(e) => #p::Result::Err(e),
                    });
                }
            }
        });
        let type_name = attr::compact(self_ty);
        let version = options.version.as_ref().map(|v| {
            let v = v.base10_parse::<u32>().unwrap_or(1);
            quote!(const VERSION: u32 = #v;)
        });
        let keyed = options
            .key
            .as_ref()
            .map(|field| expand_key(&p, field, routes));
        let strategy = options.strategy.as_ref().map(|s| {
            let value = s.expand(&p);
            quote!(const STRATEGY: &'static dyn #p::SyncStrategy = #value;)
        });
        let bulk = options.bulk.as_ref().map(|path| {
            let call = match bulk_method(path) {
                Some(method) => quote_spanned!(path.span()=> Self::#method(batch)),
                None => quote_spanned!(path.span()=> #path(batch)),
            };
            quote! {
                const BULK: bool = true;
                fn bulk(
                    batch: #p::BulkBatch<'_, #model>,
                ) -> #p::BoxFuture<'_, #p::Result<(), #p::ApplyError>> {
                    #p::bulk_hook(#call)
                }
            }
        });
        let reads_metadata = options.bulk.is_some();
        quote! {
            const _: () = {
                impl #p::Perspective for #self_ty {
                    type Model = #model;
                    const NAME: &'static str = #name;
                    const MODE: #p::PerspectiveMode = #mode;
                    #strategy
                    #bulk
                    const EVENT_TYPES: &'static [&'static str] = &[#(#names),*];
                    #version
                    // The methods see the payload alone (a bulk hook sees
                    // the events whole).
                    const READS_METADATA: bool = #reads_metadata;
                    fn event_type_ids() -> #p::Vec<#p::TypeId> {
                        <[#p::TypeId]>::to_vec(&[#(#type_ids),*])
                    }
                    fn apply(
                        model: &mut #model,
                        event: &#p::StoredEvent,
                    ) -> #p::Result<bool, #p::ApplyError> {
                        <Self as #p::Perspective>::apply_op(model, event)
                            .map(|op| #p::Option::is_some(&op))
                    }
                    fn apply_op(
                        model: &mut #model,
                        event: &#p::StoredEvent,
                    ) -> #p::Result<#p::Option<#p::ModelOp>, #p::ApplyError> {
                        #(#applies)*
                        #p::Result::Ok(#p::Option::None)
                    }
                    #keyed
                }
                #p::inventory::submit! {
                    #p::PerspectiveRegistration::of::<#self_ty>(#type_name, ::core::module_path!())
                }
            };
        }
    }
}

/// `KEYED` and `model_key` of a keyed perspective: per routed event type,
/// its field `field` converted into the model key. The field access and the
/// conversion are spanned on the event type in the method's signature, so a
/// missing field or a type that is no key lands on the user's code.
fn expand_key(p: &TokenStream, field: &Ident, routes: &[Route<'_>]) -> TokenStream {
    let keys = routes.iter().map(|Route { event, .. }| {
        let name = quote_spanned!(event.span()=> <#event as #p::Message>::NAME);
        let field = Ident::new(&field.unraw().to_string(), event.span());
        let key = quote_spanned! {event.span()=>
            #p::IntoModelKey::to_model_key(&payload.#field)
        };
        quote! {
            if event.event_type == #name {
                return match #p::event_payload::<#event>(event) {
                    #p::Result::Ok(payload) => {
                        let payload: &#event = &payload;
                        #p::Result::Ok(#p::Option::Some(#key))
                    }
                    #p::Result::Err(e) => #p::Result::Err(e),
                };
            }
        }
    });
    quote! {
        const KEYED: bool = true;
        fn model_key(
            event: &#p::StoredEvent,
        ) -> #p::Result<#p::Option<#p::ModelKey>, #p::ApplyError> {
            #(#keys)*
            #p::Result::Ok(#p::Option::None)
        }
    }
}

/// The route of one method, or an error spanned on its signature.
fn check_method<'a>(cx: &Ctxt, method: &'a ImplItemFn, model: Option<&str>) -> Option<Route<'a>> {
    let sig = &method.sig;
    let name = &sig.ident;
    let expected = model.unwrap_or("Model");
    let fail = |why: String| {
        cx.error_spanned_by(
            sig,
            format!(
                "perspective methods take `(&mut {expected}, &Event)`: {why} \
                 (mark helper methods #[perspective(skip)])"
            ),
        );
        None
    };
    if sig.asyncness.is_some() {
        return fail(format!("`{name}` must not be async"));
    }
    if sig.unsafety.is_some() || sig.abi.is_some() || sig.variadic.is_some() {
        return fail(format!("`{name}` must be a plain safe `fn`"));
    }
    if sig
        .generics
        .params
        .iter()
        .any(|p| !matches!(p, syn::GenericParam::Lifetime(_)))
    {
        return fail(format!("`{name}` must not be generic"));
    }
    let mut args = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(_) => return fail(format!("`{name}` takes `self`")),
            FnArg::Typed(arg) => args.push(&*arg.ty),
        }
    }
    let [first, second] = args[..] else {
        let n = args.len();
        let plural = if n == 1 { "" } else { "s" };
        return fail(format!("`{name}` takes {n} argument{plural}"));
    };
    let Type::Reference(model_ref) = first else {
        return fail("the first argument must be `&mut` the model".to_owned());
    };
    if model_ref.mutability.is_none() {
        return fail("the first argument must be `&mut` the model".to_owned());
    }
    let Type::Reference(event_ref) = second else {
        return fail("the second argument must be `&` the event".to_owned());
    };
    if event_ref.mutability.is_some() {
        return fail("the second argument must be `&` the event, not `&mut`".to_owned());
    }
    if let Some(model) = model {
        let found = attr::compact(&model_ref.elem);
        if found != model {
            cx.error_spanned_by(
                &model_ref.elem,
                format!(
                    "the first argument of a perspective method is the model: \
                     expected `&mut {model}` (from `model = {model}`), found `&mut {found}`"
                ),
            );
            return None;
        }
    }
    Some(Route {
        method: name,
        event: &event_ref.elem,
    })
}
