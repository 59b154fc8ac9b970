use cqrs_core::*;
fn main() {
    println!("CommandInput {}", std::mem::size_of::<CommandInput>());
    println!("DataItem {}", std::mem::size_of::<DataItem>());
    println!("CommandRecord {}", std::mem::size_of::<CommandRecord>());
    println!("Attributes {}", std::mem::size_of::<Attributes>());
    println!("ApplyWrite {}", std::mem::size_of::<ApplyWrite>());
    println!("Synced {}", std::mem::size_of::<Synced>());
    println!(
        "Option<IdempotencyKey> {}",
        std::mem::size_of::<Option<IdempotencyKey>>()
    );
    println!("Result<Synced> {}", std::mem::size_of::<Result<Synced>>());
    println!("Error {}", std::mem::size_of::<Error>());
    let engine = cqrs_memory::InMemory::engine().build();
    let ctx = InvocationContext::new("shop-a", "bench");
    let f = engine.publish_sync(CommandInput::new("TENANT#shop-a", "X#1"), &ctx);
    println!("publish_sync future (boxed) {}", std::mem::size_of_val(&*f));
    let f2 = engine.publish_sync_typed(CommandInput::new("TENANT#shop-a", "X#1"), 1u32, &ctx);
    println!(
        "publish_sync_typed future (boxed) {}",
        std::mem::size_of_val(&*f2)
    );
}
