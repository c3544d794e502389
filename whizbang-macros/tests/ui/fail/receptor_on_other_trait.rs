use whizbang_macros::receptor;

struct OrderDesk;

#[receptor]
impl Clone for OrderDesk {
    fn clone(&self) -> Self {
        OrderDesk
    }
}

fn main() {}
