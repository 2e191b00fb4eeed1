//! `corvid`: deploy files to Linux server fleets over BitTorrent.
fn main() {
    println!("corvid {}", env!("CARGO_PKG_VERSION"));
}
