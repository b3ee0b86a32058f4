//! SEsparse and COWD extents written from a list of grains, laid out as ESXi lays them out
//! (headers, directory, pre-sized tables area, then grains in the order they were put), and
//! the descriptors that name them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vdisk_core::SECTOR;

use crate::cowd::{CowdHeader, COWD_GTES_PER_GT, COWD_HEADER_BYTES};
use crate::sesparse::{
    SeSparseConstHeader, SeSparseGrain, SeSparseVolatileHeader, SESPARSE_CONST_MAGIC,
    SESPARSE_GRAIN_SECTORS, SESPARSE_TABLE_SECTORS, SESPARSE_VERSION, SESPARSE_VOLATILE_MAGIC,
};

/// What to put in one grain's table entry.
#[derive(Debug, Clone, Copy)]
pub enum EsxGrain<'a> {
    /// Data (at most one grain; a shorter slice is padded with zeros).
    Data(&'a [u8]),
    /// A zero grain (SEsparse kind 2; COWD entry 1).
    Zero,
    /// An unmapped grain (SEsparse kind 1; COWD has none and writes entry 1).
    Unmapped,
    /// This exact entry value (for damaged images).
    Raw(u64),
}

const SE_GRAIN: u64 = SESPARSE_GRAIN_SECTORS * SECTOR;
const SE_GTES: u64 = SESPARSE_TABLE_SECTORS * SECTOR / 8;

/// Writes an SEsparse extent: grains are appended to the grains area as they are put; tables
/// get numbers in the order they are first used (so the directory's order and the tables'
/// order differ when grains are put out of order, as in ESXi's files); directory, tables and
/// headers are written by [`SeSparseWriter::finish`].
pub struct SeSparseWriter {
    out: BufWriter<File>,
    header: SeSparseConstHeader,
    /// Directory slot -> (table number, entries).
    tables: HashMap<u64, (u64, Vec<u64>)>,
    next_grain: u64,
}

impl SeSparseWriter {
    /// Create `path` for a disk of `capacity` bytes (a multiple of 512).
    pub fn create(path: &Path, capacity: u64) -> std::io::Result<Self> {
        let sectors = capacity / SECTOR;
        let gd_entries = sectors.div_ceil(SE_GTES * SESPARSE_GRAIN_SECTORS).max(1);
        let gd_sectors = (gd_entries * 8).div_ceil(SECTOR);
        let gd_offset = 16;
        let tables_offset = gd_offset + gd_sectors;
        let tables_size = gd_entries * SESPARSE_TABLE_SECTORS;
        let bitmap_offset = tables_offset + tables_size;
        let backmap_offset = bitmap_offset + 8;
        // Grains start on a 4 KiB boundary.
        let grains_offset = (backmap_offset + 8).next_multiple_of(8);
        let header = SeSparseConstHeader {
            magic: SESPARSE_CONST_MAGIC,
            version: SESPARSE_VERSION,
            capacity: sectors,
            grain_size: SESPARSE_GRAIN_SECTORS,
            grain_table_size: SESPARSE_TABLE_SECTORS,
            flags: 0,
            reserved: [0; 4],
            volatile_header_offset: 1,
            volatile_header_size: 1,
            journal_header_offset: 2,
            journal_header_size: 2,
            journal_offset: 4,
            journal_size: 12,
            grain_dir_offset: gd_offset,
            grain_dir_size: gd_sectors,
            grain_tables_offset: tables_offset,
            grain_tables_size: tables_size,
            free_bitmap_offset: bitmap_offset,
            free_bitmap_size: 8,
            backmap_offset,
            backmap_size: grains_offset - backmap_offset,
            grains_offset,
            grains_size: 0,
            padding_is_zero: true,
        };
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.seek(SeekFrom::Start(grains_offset * SECTOR))?;
        Ok(SeSparseWriter {
            out,
            header,
            tables: HashMap::new(),
            next_grain: 0,
        })
    }

    /// Set grain `grain` (index from the start of the disk; each at most once).
    pub fn put(&mut self, grain: u64, what: EsxGrain<'_>) -> std::io::Result<()> {
        let entry = match what {
            EsxGrain::Data(d) => {
                let n = d.len().min(SE_GRAIN as usize);
                self.out.write_all(&d[..n])?;
                self.out
                    .write_all(&[0u8; SE_GRAIN as usize][..SE_GRAIN as usize - n])?;
                self.next_grain += 1;
                SeSparseGrain::Allocated(self.next_grain - 1).encode()
            }
            EsxGrain::Zero => SeSparseGrain::Zero.encode(),
            EsxGrain::Unmapped => SeSparseGrain::Unmapped.encode(),
            EsxGrain::Raw(v) => v,
        };
        let slot = grain / SE_GTES;
        let number = self.tables.len() as u64;
        let table = self
            .tables
            .entry(slot)
            .or_insert_with(|| (number, vec![0; SE_GTES as usize]));
        table.1[(grain % SE_GTES) as usize] = entry;
        Ok(())
    }

    /// Write the directory, the tables and the headers; returns the constant header written.
    pub fn finish(mut self) -> std::io::Result<SeSparseConstHeader> {
        self.out.flush()?;
        let h = &mut self.header;
        h.grains_size = self.next_grain * SESPARSE_GRAIN_SECTORS;
        let file = self.out.get_ref();
        file.set_len((h.grains_offset + h.grains_size) * SECTOR)?;
        file.write_all_at(&h.to_bytes(), 0)?;
        let volatile = SeSparseVolatileHeader {
            magic: SESPARSE_VOLATILE_MAGIC,
            free_gt_number: self.tables.len() as u64,
            next_txn_seq_number: 1,
            replay_journal: 0,
            padding_is_zero: true,
        };
        file.write_all_at(&volatile.to_bytes(), h.volatile_header_offset * SECTOR)?;
        let mut gd = vec![0u8; (h.grain_dir_size * SECTOR) as usize];
        for (&slot, (number, entries)) in &self.tables {
            let at = (slot * 8) as usize;
            gd[at..at + 8].copy_from_slice(&(0x1000_0000_0000_0000 | number).to_le_bytes());
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            let table_at = (h.grain_tables_offset + number * SESPARSE_TABLE_SECTORS) * SECTOR;
            file.write_all_at(&bytes, table_at)?;
        }
        file.write_all_at(&gd, h.grain_dir_offset * SECTOR)?;
        file.sync_all()?;
        Ok(self.header)
    }
}

/// Writes a COWD extent: header, directory at sector 4, then tables and grains in the order
/// they are first needed (as ESX allocates them from the next free sector).
pub struct CowdWriter {
    out: BufWriter<File>,
    header: CowdHeader,
    grain_bytes: u64,
    /// Directory slot -> (table sector, entries).
    tables: HashMap<u64, (u32, Vec<u32>)>,
    next: u64,
}

impl CowdWriter {
    /// Create `path` for a disk of `capacity` bytes with grains of `grain_sectors` sectors,
    /// naming `parent` in the header (empty for none).
    pub fn create(
        path: &Path,
        capacity: u64,
        grain_sectors: u32,
        parent: &str,
    ) -> std::io::Result<Self> {
        let mut header = CowdHeader {
            version: 1,
            flags: 3,
            capacity: u32::try_from(capacity / SECTOR).expect("COWD capacity fits in 32 bits"),
            grain_size: grain_sectors,
            gd_offset: (COWD_HEADER_BYTES / SECTOR) as u32,
            gd_entries: 0,
            free_sector: 0,
            parent_file_name: parent.as_bytes().to_vec(),
            parent_generation: 0,
            generation: 1,
            unclean_shutdown: 0,
        };
        header.gd_entries = header.needed_entries() as u32;
        let gd_sectors = (u64::from(header.gd_entries) * 4).div_ceil(SECTOR);
        let next = u64::from(header.gd_offset) + gd_sectors;
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.seek(SeekFrom::Start(next * SECTOR))?;
        Ok(CowdWriter {
            out,
            grain_bytes: u64::from(grain_sectors) * SECTOR,
            header,
            tables: HashMap::new(),
            next,
        })
    }

    /// The header to be written (tests may change it before [`CowdWriter::finish`]).
    pub fn header_mut(&mut self) -> &mut CowdHeader {
        &mut self.header
    }

    /// Set grain `grain` (each at most once).
    pub fn put(&mut self, grain: u64, what: EsxGrain<'_>) -> std::io::Result<()> {
        let slot = grain / COWD_GTES_PER_GT;
        if !self.tables.contains_key(&slot) {
            // The table's room, written out at finish.
            let sector = self.next as u32;
            self.out
                .write_all(&vec![0u8; COWD_GTES_PER_GT as usize * 4])?;
            self.next += COWD_GTES_PER_GT * 4 / SECTOR;
            self.tables
                .insert(slot, (sector, vec![0; COWD_GTES_PER_GT as usize]));
        }
        let entry = match what {
            EsxGrain::Data(d) => {
                let gb = self.grain_bytes as usize;
                let n = d.len().min(gb);
                self.out.write_all(&d[..n])?;
                self.out.write_all(&vec![0u8; gb - n])?;
                let at = self.next as u32;
                self.next += self.grain_bytes / SECTOR;
                at
            }
            EsxGrain::Zero | EsxGrain::Unmapped => 1,
            EsxGrain::Raw(v) => v as u32,
        };
        let table = self.tables.get_mut(&slot).expect("inserted above");
        table.1[(grain % COWD_GTES_PER_GT) as usize] = entry;
        Ok(())
    }

    /// Write the directory, the tables and the header; returns the header written.
    pub fn finish(mut self) -> std::io::Result<CowdHeader> {
        self.out.flush()?;
        self.header.free_sector = self.next as u32;
        let file = self.out.get_ref();
        file.set_len(self.next * SECTOR)?;
        file.write_all_at(&self.header.to_bytes(), 0)?;
        let mut gd = vec![0u8; self.header.gd_entries as usize * 4];
        for (&slot, (sector, entries)) in &self.tables {
            let at = slot as usize * 4;
            if at + 4 <= gd.len() {
                gd[at..at + 4].copy_from_slice(&sector.to_le_bytes());
            }
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
            file.write_all_at(&bytes, u64::from(*sector) * SECTOR)?;
        }
        file.write_all_at(&gd, u64::from(self.header.gd_offset) * SECTOR)?;
        file.sync_all()?;
        Ok(self.header)
    }
}

/// A descriptor as ESXi writes them: `create_type` (`seSparse`, `vmfsSparse`, `vmfs`), the
/// CIDs, the parent's file name for a snapshot, and `extents` as `(sectors, TYPE, file)`.
pub fn esx_descriptor(
    create_type: &str,
    cid: u32,
    parent: Option<(u32, &str)>,
    extents: &[(u64, &str, &str)],
) -> String {
    use std::fmt::Write;
    let mut t = String::from("# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\n");
    let _ = writeln!(t, "CID={cid:08x}");
    let _ = writeln!(t, "parentCID={:08x}", parent.map_or(0xffff_ffff, |p| p.0));
    let _ = writeln!(t, "isNativeSnapshot=\"no\"");
    let _ = writeln!(t, "createType=\"{create_type}\"");
    if let Some((_, hint)) = parent {
        let _ = writeln!(t, "parentFileNameHint=\"{hint}\"");
    }
    t.push_str("# Extent description\n");
    for (sectors, kind, file) in extents {
        let _ = writeln!(t, "RW {sectors} {kind} \"{file}\"");
    }
    t.push_str("\n# The Disk Data Base\n#DDB\n\n");
    t.push_str("ddb.adapterType = \"lsilogic\"\n");
    if create_type == "seSparse" {
        t.push_str("ddb.grain = \"8\"\n");
    }
    let _ = writeln!(
        t,
        "ddb.longContentID = \"{cid:08x}{cid:08x}{cid:08x}{cid:08x}\""
    );
    t.push_str("ddb.virtualHWVersion = \"14\"\n");
    t
}
