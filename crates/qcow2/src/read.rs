//! Reads and maps: a qcow2 layer as a [`DiskImage`].
//!
//! A read walks the L2 entries of its range once; runs of clusters that are contiguous in the
//! file are read with one call, compressed clusters are inflated on the reading thread.

use std::cell::RefCell;

use vdisk_core::{
    check_range, coalesce, Advice, Allocation, DiskImage, Error, Extent, FileId, Result,
};

use crate::compress::decompress;
use crate::image::Qcow2Image;
use crate::tables::{ClusterMapping, Mapping};

thread_local! {
    /// A cluster inflated for a read of part of it.
    static CLUSTER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Compressed bytes read from a file that is not mapped.
    static PACKED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Qcow2Image {
    /// Read stored data at host offset `host` of the data file into `dst`.
    fn read_data(&self, dst: &mut [u8], host: u64, guest: u64) -> Result<()> {
        let file = self.data_bytes();
        if host >= file.len() {
            return Err(Error::corrupt(format!(
                "guest offset {guest} is stored at host offset {host}, past the end of the \
                 file ({} bytes)",
                file.len()
            ))
            .with_path(file.path()));
        }
        // Past the end of the file (a last cluster written short) reads as zero.
        file.read_at(dst, host)
    }

    /// Read part of the compressed cluster holding guest offset `guest` into `dst`.
    fn read_compressed(&self, dst: &mut [u8], guest: u64, offset: u64, len: u64) -> Result<()> {
        let cs = self.geo.cluster_size;
        let file_len = self.bytes.len();
        if offset >= file_len {
            return Err(Error::corrupt(format!(
                "compressed cluster of guest offset {guest} is at host offset {offset}, past \
                 the end of the file"
            )));
        }
        let kind = self.header.compression;
        // The descriptor's sectors may run past the end of the file: what is there is used.
        let avail = len.min(file_len - offset) as usize;
        let inflate = |src: &[u8], dst: &mut [u8]| -> Result<()> {
            let in_cluster = (guest % cs) as usize;
            if in_cluster == 0 && dst.len() as u64 == cs {
                return decompress(kind, src, dst);
            }
            CLUSTER.with(|c| {
                let mut c = c.borrow_mut();
                c.resize(cs as usize, 0);
                decompress(kind, src, &mut c)?;
                dst.copy_from_slice(&c[in_cluster..in_cluster + dst.len()]);
                Ok(())
            })
        };
        let r = match self.bytes.slice() {
            Some(s) => inflate(&s[offset as usize..offset as usize + avail], dst),
            None => PACKED.with(|p| {
                let mut p = p.borrow_mut();
                p.resize(avail, 0);
                self.bytes.read_at(&mut p, offset)?;
                inflate(&p, dst)
            }),
        };
        r.map_err(|e| Error::corrupt(format!("{} (guest offset {guest})", e.message())).at(offset))
    }

    /// The first byte at or after `offset` that this layer stores data for.
    fn next_data_in(&self, offset: u64) -> Result<Option<u64>> {
        let size = self.size();
        let geo = &self.geo;
        let cs = geo.cluster_size;
        let cov = geo.l2_coverage();
        let mut pos = offset;
        while pos < size {
            let index = pos / cov;
            let table_end = size.min((index + 1).saturating_mul(cov));
            let Some(table) = self.l2_table(index)? else {
                pos = table_end;
                continue;
            };
            while pos < table_end {
                let cstart = pos & !(cs - 1);
                let cend = table_end.min(cstart + cs);
                let (e, bitmap) = geo.raw_entry(&table, ((cstart % cov) / cs) as usize);
                let m = geo.decode(e, bitmap)?;
                let mut found = None;
                if let ClusterMapping::Whole(Mapping::Unallocated | Mapping::Zero) = m {
                } else {
                    m.runs(geo, pos - cstart, cend - cstart, |s, _, m| {
                        if found.is_none() && m.is_data() {
                            found = Some(cstart + s);
                        }
                        Ok(())
                    })?;
                }
                if found.is_some() {
                    return Ok(found);
                }
                pos = cend;
            }
        }
        Ok(None)
    }
}

impl DiskImage for Qcow2Image {
    fn size(&self) -> u64 {
        self.header.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let path = self.bytes.path();
        check_range(self.size(), offset, buf.len() as u64).map_err(|e| e.with_path(path))?;
        self.walk(offset, buf.len() as u64, |start, len, m| {
            let dst = &mut buf[(start - offset) as usize..(start - offset + len) as usize];
            match m {
                Mapping::Unallocated | Mapping::Zero => {
                    dst.fill(0);
                    Ok(())
                }
                Mapping::Data(host) => self.read_data(dst, host, start),
                Mapping::Compressed { offset, len } => {
                    self.read_compressed(dst, start, offset, len)
                }
            }
        })
        .map_err(|e| e.with_path(path))
    }

    fn allocation(&self, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let path = self.bytes.path();
        check_range(self.size(), offset, length).map_err(|e| e.with_path(path))?;
        let mut map = Vec::new();
        self.walk(offset, length, |start, length, m| {
            let allocation = match m {
                Mapping::Unallocated => Allocation::Unallocated,
                Mapping::Zero => Allocation::Zero,
                Mapping::Data(_) | Mapping::Compressed { .. } => Allocation::Data,
            };
            coalesce(
                &mut map,
                Extent {
                    start,
                    length,
                    allocation,
                    depth: 0,
                },
            );
            Ok(())
        })
        .map_err(|e| e.with_path(path))?;
        Ok(map)
    }

    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn mapped(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.size() {
            return None;
        }
        let mut host = None;
        let mut runs = 0;
        self.walk(offset, len, |_, _, m| {
            runs += 1;
            host = match m {
                Mapping::Data(h) => Some(h),
                _ => None,
            };
            Ok(())
        })
        .ok()?;
        if runs != 1 {
            return None;
        }
        let h = usize::try_from(host?).ok()?;
        self.data_bytes()
            .slice()?
            .get(h..h.checked_add(usize::try_from(len).ok()?)?)
    }

    fn next_data(&self, offset: u64) -> Result<Option<u64>> {
        self.next_data_in(offset)
            .map_err(|e| e.with_path(self.bytes.path()))
    }

    fn advise(&self, offset: u64, len: u64, advice: Advice) {
        if advice == Advice::Paced {
            self.bytes.advise(0, self.bytes.len(), advice);
            if let Some(d) = &self.data {
                d.advise(0, d.len(), advice);
            }
            return;
        }
        let size = self.size();
        if offset >= size {
            return;
        }
        let len = len.min(size - offset);
        // Hints are best effort: a range whose tables are damaged is left alone.
        let _ = self.walk(offset, len, |_, l, m| {
            match m {
                Mapping::Data(h) => self.data_bytes().advise(h, l, advice),
                Mapping::Compressed { offset, len } => self.bytes.advise(offset, len, advice),
                _ => {}
            }
            Ok(())
        });
    }

    fn files(&self) -> Vec<FileId> {
        self.bytes
            .id()
            .into_iter()
            .chain(self.data.as_ref().and_then(|d| d.id()))
            .collect()
    }

    fn unclean_shutdown(&self) -> bool {
        self.header.incompatible(crate::header::incompat::DIRTY)
    }
}
