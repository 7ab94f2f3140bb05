// sqlx::migrate! embeds migrations/ at compile time; without this, adding a migration does not
// rebuild the binary that is meant to apply it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
