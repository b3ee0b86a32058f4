//! Writers of test images in formats that vdisk reads but no tool on a test machine writes
//! (ESXi's SEsparse and COWD snapshot extents). They serve the integration tests, the fuzz
//! seeds and the benchmarks; they are not part of the supported API and write only what
//! those need (no journal contents, no free-space bitmap or back map).

mod esx;

pub use esx::{esx_descriptor, CowdWriter, EsxGrain, SeSparseWriter};
