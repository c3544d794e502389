use whizbang_core::{await_perspective_sync, fire_at};

struct Views;

#[await_perspective_sync(Views)]
impl Views {
    fn helper(&self) {}
}

#[fire_at(PostPerspectiveDetached)]
fn not_an_impl() {}

#[await_perspective_sync(Views)]
#[whizbang_core::receptor]
struct NotAnImpl;

fn main() {
    Views.helper();
    not_an_impl();
}
