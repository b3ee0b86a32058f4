//! Adds ENTRIES synthetic entries to the index of a layout-3 repository (benches/compare-repo.sh:
//! a backup's peak memory against the index of a repository of 10^8 blocks, without storing
//! them). The entries name packs that do not exist: use the repository for nothing else.
//!
//! ```sh
//! vdisk init /var/tmp/big && cargo run --release --example synthetic_index -- /var/tmp/big 100000000
//! ```

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(repo), Some(Ok(entries))) = (args.first(), args.get(1).map(|s| s.parse::<u64>()))
    else {
        eprintln!("usage: synthetic_index REPO ENTRIES [SEED]");
        std::process::exit(2);
    };
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    match vdisk_chain::fuzzing::synthetic_index(&PathBuf::from(repo), entries, seed) {
        Ok(tables) => println!("{entries} entries in {tables} tables"),
        Err(e) => {
            eprintln!("synthetic_index: {e}");
            std::process::exit(1);
        }
    }
}
