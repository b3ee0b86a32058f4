//! Writers of test images in formats that vdisk reads but no tool on a test machine writes
//! (ESXi's SEsparse and COWD snapshot extents), and hand-made descriptors for chains. They serve the integration tests, the fuzz
//! seeds and the benchmarks; they are not part of the supported API and write only what
//! those need (no journal contents, no free-space bitmap or back map).

mod chains;
mod esx;

pub use chains::{descriptor, store_with_base};
pub use esx::{esx_descriptor, CowdWriter, EsxGrain, SeSparseWriter};
