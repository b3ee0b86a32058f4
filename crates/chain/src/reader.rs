//! Reading a repository of either layout: the reading commands (list, verify, restore,
//! serve) open what is there.

use vdisk_core::Result;

use crate::repository::{Access, Repository};
use crate::store::{self, Layout, Location};

/// A repository opened to read, in the layout it is in.
#[derive(Debug)]
pub enum Reader {
    /// The earlier layout (a VMDK chain per folder).
    Two(crate::layout2::Repository),
    /// Layout 3.
    Three(Repository),
}

/// Open the repository at `location` to read it, whichever layout it is in.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// vdisk_chain::layout2::doc_example_repository(&dir.path().join("old"));
/// let r = vdisk_chain::open_reader(dir.path().join("old"), &Default::default())?;
/// assert!(matches!(r, vdisk_chain::Reader::Two(_)));
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub fn open_reader(location: impl Into<Location>, access: &Access<'_>) -> Result<Reader> {
    let loc = location.into();
    let (objects, legacy) = store::open_both(&loc)?;
    match store::layout_of(&*objects, &*legacy)? {
        Layout::Three => Ok(Reader::Three(Repository::open_in(objects, access)?)),
        Layout::Two => Ok(Reader::Two(crate::layout2::Repository::open_in(legacy)?)),
        Layout::None => Err(Repository::none_here(objects.location())),
    }
}
