//! monolithicFlat and twoGbMaxExtentFlat: a descriptor and flat files that are sparse files,
//! holes wherever the disk is zero.

use vdisk_core::{ImageSink, Result, SECTOR};
use vdisk_io::SparseWriter;

use super::{
    extent_line, new_descriptor, ExtentCursor, OutputFiles, Subformat, WriteOptions, SPLIT_SECTORS,
};
use crate::descriptor::{Descriptor, ExtentType};

/// Data ranges are rounded out to file-system blocks: holes stay holes.
const FLAT_BLOCK: u64 = 4096;

pub(crate) struct FlatImage {
    files: OutputFiles,
    descriptor: Descriptor,
    /// Sectors per file (the last may be shorter).
    per_file: u64,
    files_written: ExtentCursor<SparseWriter>,
}

impl FlatImage {
    pub(crate) fn create(
        mut files: OutputFiles,
        sectors: u64,
        subformat: Subformat,
        opts: &WriteOptions,
    ) -> Result<Self> {
        let split = subformat == Subformat::TwoGbMaxExtentFlat;
        let per_file = if split { SPLIT_SECTORS } else { sectors.max(1) };
        let count = sectors.div_ceil(per_file).max(1);
        let suffixes: Vec<String> = if split {
            (0..count).map(|i| format!("-f{:03}", i + 1)).collect()
        } else {
            vec!["-flat".to_string()]
        };
        let extents = files
            .extent_names(&suffixes)
            .into_iter()
            .zip(0..count)
            .map(|(name, i)| {
                let len = sectors.saturating_sub(i * per_file).min(per_file);
                extent_line(len, ExtentType::Flat, name)
            })
            .collect();
        let descriptor = new_descriptor(subformat.name(), extents, sectors, opts, None);
        Ok(FlatImage {
            files,
            descriptor,
            per_file,
            files_written: ExtentCursor::new(),
        })
    }

    /// Create flat file `index` of `descriptor`, full size, all holes.
    fn open(descriptor: &Descriptor, files: &OutputFiles, index: u64) -> Result<SparseWriter> {
        let line = &descriptor.extents[index as usize];
        files.open(line.file.as_deref(), line.sectors * SECTOR)
    }
}

impl ImageSink for FlatImage {
    fn block_size(&self) -> u64 {
        FLAT_BLOCK
    }
    fn takes_runs(&self) -> bool {
        true
    }
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let per_file_bytes = self.per_file * SECTOR;
        for &(off, data) in blocks {
            // Runs never cross a 4 MiB boundary of the disk (the copy is cut there), and 2 GiB
            // is a multiple of that: no run straddles two files.
            let index = off / per_file_bytes;
            let descriptor = &self.descriptor;
            let f = self
                .files_written
                .get(index, &mut self.files, &|files, i| {
                    Self::open(descriptor, files, i)
                })?;
            let at = off - index * per_file_bytes;
            f.write_at(data, at)?;
            f.start_writeback(at, data.len() as u64);
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()> {
        let mut me = *self;
        let count = me.descriptor.extents.len() as u64;
        let descriptor = &me.descriptor;
        me.files_written
            .finish_before(count, &mut me.files, &|files, i| {
                Self::open(descriptor, files, i)
            })?;
        let text = me.descriptor.render();
        let main = me.files.open(None, text.len() as u64)?;
        main.write_raw(text.as_bytes(), 0)?;
        me.files.commit(main)
    }
}
