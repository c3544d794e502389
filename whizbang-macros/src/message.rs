//! `#[derive(Event)]` and `#[derive(Command)]`: the [`Message`] impl, the
//! `Event`/`Command` marker impls, and one `MessageRegistration` each.
//!
//! Parse (`#[event(..)]`/`#[command(..)]` and `#[stream_key]` into a model),
//! check (concrete type, one stream key), expand (from the checked model).

use crate::attr::{self, Attr};
use crate::ctx::Ctxt;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Member, Type};

/// The helper attribute that marks an event's stream id field.
const STREAM_KEY: &str = "stream_key";

/// `#[derive(Event)]`.
pub(crate) fn expand_derive_event(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(err) => return err.to_compile_error(),
    };
    let cx = Ctxt::new();
    let model = EventModel::from_ast(&cx, &input);
    match (cx.check(), model) {
        (Ok(()), Some(model)) => model.expand(),
        (Err(err), _) => err.to_compile_error(),
        (Ok(()), None) => TokenStream::new(),
    }
}

/// `#[derive(Command)]`.
pub(crate) fn expand_derive_command(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(err) => return err.to_compile_error(),
    };
    let cx = Ctxt::new();
    let model = CommandModel::from_ast(&cx, &input);
    match cx.check() {
        Ok(()) => model.expand(),
        Err(err) => err.to_compile_error(),
    }
}

/// What both derives share: the type, its wire name, the runtime's path.
struct Common<'a> {
    ident: &'a syn::Ident,
    name: String,
    krate: syn::Path,
}

impl Common<'_> {
    fn message_impl(&self, kind: &str, output: &TokenStream) -> TokenStream {
        let Common { ident, name, krate } = self;
        let kind = syn::Ident::new(kind, proc_macro2::Span::call_site());
        quote! {
            impl #krate::__private::Message for #ident {
                const NAME: &'static str = #name;
                const KIND: #krate::__private::MessageKind = #krate::__private::MessageKind::#kind;
                type Output = #output;
            }
        }
    }

    fn registration(&self) -> TokenStream {
        self.registration_with(&TokenStream::new())
    }

    /// The registration, with `then` (builder calls) applied to the record.
    fn registration_with(&self, then: &TokenStream) -> TokenStream {
        let Common { ident, krate, .. } = self;
        let type_name = ident.to_string();
        quote! {
            #krate::__private::inventory::submit! {
                #krate::__private::MessageRegistration::of::<#ident>(#type_name, ::core::module_path!())#then
            }
        }
    }
}

/// Rejects generic messages: a wire name must name one concrete type.
fn check_concrete(cx: &Ctxt, input: &DeriveInput, what: &str) {
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            format!("{what} must be concrete types: their wire name must be unique"),
        );
    }
}

struct EventModel<'a> {
    common: Common<'a>,
    stream_key: Member,
    stream_key_ty: &'a Type,
    /// `#[event(publish)]`: the event leaves the service through the outbox.
    publish: bool,
}

impl<'a> EventModel<'a> {
    fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let mut name = Attr::none(cx, "name");
        let mut krate = Attr::none(cx, "crate");
        let mut publish = Attr::none(cx, "publish");
        attr::parse_helper_attrs(
            cx,
            &input.attrs,
            "event",
            &["name", "publish", "crate"],
            |key, input| {
                if key == "name" {
                    name.set(key, attr::name_value(input)?);
                } else if key == "publish" {
                    // A flag: `#[event(publish)]`.
                    if input.peek(syn::Token![=]) {
                        return Err(syn::Error::new(
                            key.span(),
                            "`publish` takes no value: write #[event(publish)] to make the \
                             event leave the service through the outbox, or leave it out",
                        ));
                    }
                    publish.set(key, key.clone());
                } else {
                    krate.set(key, attr::value::<syn::Path>(input)?);
                }
                Ok(())
            },
        );
        check_concrete(cx, input, "events");

        let ident = &input.ident;
        let fields = match &input.data {
            Data::Struct(data) => Some(&data.fields),
            Data::Enum(data) => {
                cx.error_spanned_by(
                    data.enum_token,
                    "derive(Event) supports structs; enums are not supported for now: \
                     derive Event on one struct per event",
                );
                None
            }
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "derive(Event) supports structs; unions are not supported",
                );
                None
            }
        };
        let stream_key = fields.and_then(|fields| find_stream_key(cx, ident, fields));

        let common = Common {
            ident,
            name: name.get().map_or_else(|| ident.to_string(), |n| n.value()),
            krate: krate.get().unwrap_or_else(attr::default_crate_path),
        };
        let publish = publish.get().is_some();
        let (stream_key, stream_key_ty) = stream_key?;
        Some(EventModel {
            common,
            stream_key,
            stream_key_ty,
            publish,
        })
    }

    fn expand(&self) -> TokenStream {
        let common = &self.common;
        let Common { ident, krate, .. } = common;
        let message = common.message_impl("Event", &quote!(()));
        let registration = if self.publish {
            common.registration_with(&quote!(.outbound()))
        } else {
            common.registration()
        };
        let publish = self.publish.then(|| {
            quote!(
                const PUBLISH: bool = true;
            )
        });
        let member = &self.stream_key;
        // Spanned on the field's type: "`T: StreamKey` is not satisfied" lands there.
        let stream_id = quote_spanned! {self.stream_key_ty.span()=>
            #krate::__private::StreamKey::to_stream_id(&self.#member)
        };
        quote! {
            const _: () = {
                #message
                impl #krate::__private::Event for #ident {
                    #publish
                    fn stream_id(&self) -> #krate::__private::StreamId {
                        #stream_id
                    }
                }
                #registration
            };
        }
    }
}

/// The one field marked `#[stream_key]`; errors for none, several, or arguments.
fn find_stream_key<'a>(
    cx: &Ctxt,
    ident: &syn::Ident,
    fields: &'a Fields,
) -> Option<(Member, &'a Type)> {
    let mut found: Option<(Member, &'a Type)> = None;
    for (index, field) in fields.iter().enumerate() {
        for attr in field.attrs.iter().filter(|a| a.path().is_ident(STREAM_KEY)) {
            if !matches!(attr.meta, syn::Meta::Path(_)) {
                cx.error_spanned_by(attr, "#[stream_key] takes no arguments");
            }
            let member = field
                .ident
                .clone()
                .map_or_else(|| Member::Unnamed(syn::Index::from(index)), Member::Named);
            if let Some((first, _)) = &found {
                cx.error_spanned_by(
                    attr,
                    format!(
                        "duplicate #[stream_key]: `{}` is already the stream key of `{ident}`; \
                         an event belongs to exactly one stream",
                        first.to_token_stream()
                    ),
                );
            } else {
                found = Some((member, &field.ty));
            }
        }
    }
    if found.is_none() {
        cx.error_spanned_by(
            ident,
            format!(
                "event `{ident}` has no #[stream_key] field: mark the field that holds the stream id"
            ),
        );
    }
    found
}

struct CommandModel<'a> {
    common: Common<'a>,
    output: Option<Type>,
}

impl<'a> CommandModel<'a> {
    fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let mut name = Attr::none(cx, "name");
        let mut output = Attr::none(cx, "output");
        let mut krate = Attr::none(cx, "crate");
        attr::parse_helper_attrs(
            cx,
            &input.attrs,
            "command",
            &["name", "output", "crate"],
            |key, input| {
                if key == "name" {
                    name.set(key, attr::name_value(input)?);
                } else if key == "output" {
                    output.set(key, attr::value::<Type>(input)?);
                } else {
                    krate.set(key, attr::value::<syn::Path>(input)?);
                }
                Ok(())
            },
        );
        check_concrete(cx, input, "commands");
        if let Data::Union(data) = &input.data {
            cx.error_spanned_by(
                data.union_token,
                "derive(Command) supports structs and enums; unions are not supported",
            );
        }
        let ident = &input.ident;
        CommandModel {
            common: Common {
                ident,
                name: name.get().map_or_else(|| ident.to_string(), |n| n.value()),
                krate: krate.get().unwrap_or_else(attr::default_crate_path),
            },
            output: output.get(),
        }
    }

    fn expand(&self) -> TokenStream {
        let common = &self.common;
        let Common { ident, krate, .. } = common;
        let output = self
            .output
            .as_ref()
            .map_or_else(|| quote!(()), ToTokens::to_token_stream);
        let message = common.message_impl("Command", &output);
        let registration = common.registration();
        quote! {
            const _: () = {
                #message
                impl #krate::__private::Command for #ident {}
                #registration
            };
        }
    }
}
