//! vdisk-image: the format registry.
//!
//! One place knows the formats: [`registry`] holds a driver per format (one Cargo feature
//! each), and every command goes through it, never matching on a format:
//!
//! - [`open`]: detect a file's format from its bytes (or take `-f`), open it with its driver,
//!   and follow its backing file down to the base, in any mix of formats, with a depth limit,
//!   loop detection, link checks and paths confined to each file's folder ([`Image`]);
//!   formats vdisk knows but does not read are refused by name, never read as raw;
//! - [`create`] and [`create_delta`]: outputs of any writable format, and deltas on any image
//!   a format can name as its parent ([`write_delta`] fills them);
//! - disks inside OVA archives, of any registered format, read in place.
//!
//! Adding a format is a crate implementing [`vdisk_io::Format`] and one line in
//! [`registry`].

#[cfg(feature = "ova")]
mod archive;
mod chain;
mod convert;
mod create;
#[doc(hidden)]
pub mod fuzzing;
mod image;
mod location;
mod open;
pub mod registry;

#[cfg(feature = "ova")]
pub use archive::{open_archive, RegistryProbe};
pub use chain::{open_chain, open_layer, probe_file, OpenOptions, MAX_CHAIN_DEPTH};
#[cfg(feature = "vmdk")]
pub use convert::convert_stream;
pub use convert::{convert, for_each_stored, merge, ConvertOptions};
pub use create::{
    create, create_delta, create_delta_in, create_in, output_format, parent_name, write_delta,
    DeltaOptions,
};
#[cfg(feature = "ova")]
pub use image::Archive;
pub use image::Image;
pub use location::ImageLocation;
pub use open::{open, open_with};
