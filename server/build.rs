// `sqlx::migrate!` embeds ../migrations at compile time; without this, cargo does not notice a
// new migration file and keeps serving a binary without it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
