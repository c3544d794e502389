use whizbang_macros::receptor;

struct OrderDesk;

#[receptor]
impl OrderDesk {
    fn handle(&self) {}
}

fn main() {}
