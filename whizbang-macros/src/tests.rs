//! Expansion snapshots: the code each macro generates, pretty-printed, so a
//! change to generated routing is a reviewed diff. The same code is what
//! `cargo expand` shows users.

use crate::lifecycle::{expand_standalone, Helper};
use crate::message::{expand_derive_command, expand_derive_event};
use crate::perspective::expand_perspective;
use crate::receptor::expand_receptor;
use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    match syn::parse_file(&tokens.to_string()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(err) => format!("/* does not parse ({err}) */\n{tokens}"),
    }
}

#[test]
fn derive_event_implements_message_event_and_registers() {
    let out = expand_derive_event(quote! {
        #[event(name = "orders.created")]
        struct OrderCreated {
            #[stream_key]
            order_id: Uuid,
            total: u64,
        }
    });
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn derive_event_with_publish_marks_it_outbound() {
    let out = expand_derive_event(quote! {
        #[event(name = "orders.placed", publish)]
        struct OrderPlaced {
            #[stream_key]
            order_id: Uuid,
        }
    });
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn derive_event_on_tuple_struct_reads_the_indexed_field() {
    let out = expand_derive_event(quote! {
        struct Pinged(u32, #[stream_key] StreamId);
    });
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn derive_command_implements_message_command_and_registers() {
    let out = expand_derive_command(quote! {
        #[command(output = OrderSummary)]
        struct CreateOrder {
            customer: String,
        }
    });
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn receptor_keeps_the_impl_and_registers_it() {
    let out = expand_receptor(
        TokenStream::new(),
        quote! {
            impl Receptor<CreateOrder> for OrderDesk {
                async fn handle(&self, cmd: CreateOrder, cx: &mut Context) -> Result<OrderSummary> {
                    todo!()
                }
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn receptor_with_crate_path_uses_it() {
    let out = expand_receptor(
        quote!(crate = ::app::wb),
        quote! {
            impl wb::Receptor<Ping> for Pinger {
                async fn handle(&self, _: Ping, _: &mut wb::Context) -> wb::Result<()> {
                    Ok(())
                }
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn receptor_registers_its_stage_and_sync_waits() {
    let out = expand_receptor(
        TokenStream::new(),
        quote! {
            #[fire_at(PostPerspectiveDetached)]
            #[whizbang_core::await_perspective_sync(
                OrderViews,
                event_types = [OrderCreated, OrderShipped],
                timeout_ms = 2000,
            )]
            #[doc = "Kept."]
            #[::await_perspective_sync(Stock, fire = always)]
            impl Receptor<OrderCreated> for Invoicer {
                async fn handle(&self, e: OrderCreated, cx: &mut Context) -> Result<()> {
                    todo!()
                }
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn lifecycle_attribute_above_receptor_moves_below_it() {
    // `Stock` was moved before (leading `::`); `OrderViews` goes after it,
    // ahead of the attribute written below `#[receptor]`.
    let out = expand_standalone(
        Helper::AwaitPerspectiveSync,
        quote!(OrderViews, timeout_ms = 2000),
        quote! {
            #[fire_at(PostPerspectiveDetached)]
            #[whizbang_core::receptor]
            #[::await_perspective_sync(Stock)]
            #[await_perspective_sync(Audit)]
            impl Receptor<OrderCreated> for Invoicer {
                async fn handle(&self, e: OrderCreated, cx: &mut Context) -> Result<()> {
                    todo!()
                }
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn perspective_routes_each_event_to_its_method() {
    let out = expand_perspective(
        quote!(model = OrderView, mode = inline),
        quote! {
            impl OrderViews {
                fn created(view: &mut OrderView, e: &OrderCreated) {
                    view.total = e.total;
                }
                fn shipped(view: &mut OrderView, _: &OrderShipped) -> Result<(), String> {
                    view.shipped = true;
                    Ok(())
                }
                #[perspective(skip)]
                fn helper(&self) {}
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn keyed_perspective_takes_each_events_key_field() {
    let out = expand_perspective(
        quote!(model = CustomerTotals, key = customer_id),
        quote! {
            impl Customers {
                fn placed(m: &mut CustomerTotals, e: &OrderPlaced) {
                    m.total += e.amount;
                }
                fn refunded(m: &mut CustomerTotals, e: &OrderRefunded) {
                    m.total -= e.amount;
                }
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn perspective_strategy_becomes_a_const_with_durations_parsed() {
    let out = expand_perspective(
        quote!(model = OrderView, strategy = batch(100, "50ms")),
        quote! {
            impl OrderViews {
                fn created(view: &mut OrderView, e: &OrderCreated) {
                    view.total = e.total;
                }
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn errors_are_collected_and_the_item_is_kept() {
    let out = expand_perspective(
        quote!(name = "", colour = blue, mode = inline, mode = async),
        quote! {
            impl Views {
                fn a(m: &mut Model, e: &E1) {}
                fn b(&self) {}
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}
