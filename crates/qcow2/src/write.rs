//! Writing qcow2 (version 3) images: sparse, optionally zstd-compressed, or as a delta over
//! a backing file.
//!
//! Layout: the header cluster, then clusters appended as they come (data, compressed data
//! packed byte by byte as qemu packs it, each L2 table once the blocks pass its range, each
//! refcount block once every cluster it counts is allocated), then the L1 table, the last
//! refcount blocks and the refcount table; the header is written last. The file is written
//! front to back but for its header, so it may go to an output that only appends (a
//! repository's object store); within a batch, writes are made in offset order once the
//! batch is placed. Memory stays at one L2 table, the L1 table, the refcounts of the clusters
//! not yet counted in a block and the batch's metadata, whatever the disk's size. Nothing is
//! visible until `finish` (crash-safe).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use byteorder::{BigEndian, ByteOrder};
use rayon::prelude::*;
use vdisk_core::{is_zero, Error, ErrorKind, ImageSink, Result};
use vdisk_io::{CreateOptions, ImageOutput, OutputFile, SparseWriter, HEAD_REGION};

use crate::compress::zstd_cluster;
use crate::header::{
    header_cluster, incompat, RawHeader, MAGIC, MAX_CLUSTER_BITS, MAX_L1_BYTES, MIN_CLUSTER_BITS,
    V3_HEADER_LEN,
};
use crate::tables::{COMPRESSED, COPIED, ZERO};

/// The default cluster size, as qemu's.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;
/// Refcount width the writer uses (order 4), as qemu's default.
const REFCOUNT_BITS: u64 = 16;
/// Writeback of appended clusters is started in pieces of this many bytes.
const WRITEBACK: u64 = 8 << 20;
/// Compressed bytes gathered before one write.
const STAGE: usize = 4 << 20;

/// How a block is stored, decided in parallel before it is placed.
enum Block {
    Zero,
    Plain,
    Packed(Vec<u8>),
}

/// A qcow2 image being written ([`ImageSink`]). Blocks are clusters; see the module docs
/// for the layout.
pub struct Qcow2Sink {
    file: Box<dyn OutputFile>,
    /// The repository output the file belongs to (`None`: a file published on its own).
    out: Option<Box<dyn ImageOutput>>,
    dst: PathBuf,
    size: u64,
    cluster_bits: u32,
    cs: u64,
    l2_entries: u64,
    compress: bool,
    /// All-zero blocks become zero clusters that mask the backing file.
    delta: bool,
    backing: Option<(Vec<u8>, String)>,
    l1: Vec<u64>,
    /// The L2 table being filled: its L1 index and entries.
    l2: Option<(u64, Vec<u64>)>,
    /// The next guest cluster a block may be for (blocks come in order).
    next_guest: u64,
    /// The next free host cluster.
    next: u64,
    /// Offsets of the refcount blocks written, by index.
    reftable: Vec<u64>,
    /// Refcounts of clusters not yet counted in a written block, where they are not one
    /// (clusters of compressed data, shared by the compressed clusters touching them).
    counts: BTreeMap<u64, u16>,
    /// Where the next compressed bytes go when packing continues in the last cluster.
    packed: Option<u64>,
    /// Packing may go on in a cluster after later clusters were written (a local file); an
    /// output that only appends closes the packed cluster when another is taken.
    repack: bool,
    /// Compressed bytes not yet written, and where they go.
    stage: (u64, Vec<u8>),
    /// Metadata (and staged compressed bytes) to write with the batch: (offset, bytes).
    queue: Vec<(u64, Vec<u8>)>,
    /// First byte not yet handed to writeback.
    unflushed: u64,
    /// Compressed clusters that may share a host cluster (its refcount is 16 bits).
    max_shared: u16,
}

/// Check and return the cluster size `opts` asks for.
fn cluster_bits_of(opts: &CreateOptions) -> Result<u32> {
    let cs = opts.cluster_size.unwrap_or(DEFAULT_CLUSTER_SIZE);
    let bits = cs.trailing_zeros();
    if !cs.is_power_of_two() || !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("qcow2 cluster size {cs} is not a power of two from 512 bytes to 2 MiB"),
        ));
    }
    Ok(bits)
}

/// Where a new image goes: a file of its own, or the main file of a repository's output.
enum Target<'a> {
    File(&'a Path),
    Output(Box<dyn ImageOutput>),
}

impl Qcow2Sink {
    /// Start writing an image of `size` bytes (rounded up to a 512-byte sector, as qemu
    /// counts disks) at `dst`; `backing` (name as written, format) makes it a delta whose
    /// all-zero blocks mask the backing file.
    pub fn create(
        dst: &Path,
        size: u64,
        opts: &CreateOptions,
        backing: Option<(&Path, &str)>,
    ) -> Result<Self> {
        Self::create_inner(Target::File(dst), size, opts, backing).map_err(|e| e.with_path(dst))
    }

    /// Start writing an image of `size` bytes as the main file of `out` (a repository's
    /// files, written front to back but for the header); see [`Qcow2Sink::create`].
    pub fn create_in(
        out: Box<dyn ImageOutput>,
        size: u64,
        opts: &CreateOptions,
        backing: Option<(&Path, &str)>,
    ) -> Result<Self> {
        let dst = out.dst().to_path_buf();
        Self::create_inner(Target::Output(out), size, opts, backing).map_err(|e| e.with_path(dst))
    }

    fn create_inner(
        target: Target<'_>,
        size: u64,
        opts: &CreateOptions,
        backing: Option<(&Path, &str)>,
    ) -> Result<Self> {
        if let Some(s) = &opts.subformat {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("a qcow2 image has no subformat (\"{s}\")"),
            ));
        }
        vdisk_core::check_disk_size(size)?;
        // qemu counts a disk in 512-byte sectors and drops a partial one: the size written
        // is rounded up to a sector, as qemu-img rounds a raw source's.
        let size = size.next_multiple_of(512);
        let cluster_bits = cluster_bits_of(opts)?;
        let cs = 1u64 << cluster_bits;
        let l2_entries = cs / 8;
        let l1_size = size.div_ceil(cs * l2_entries);
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(Error::unsupported(format!(
                "a disk of {size} bytes needs an L1 table above qemu's 32 MiB with {cs}-byte \
                 clusters: choose larger clusters"
            )));
        }
        let backing = backing.map(|(name, format)| {
            use std::os::unix::ffi::OsStrExt;
            (name.as_os_str().as_bytes().to_vec(), format.to_string())
        });
        // The header must fit in the first cluster with the backing name (and, for an
        // output that only appends, in the region written last): check now.
        let head = header_cluster(
            &RawHeader {
                version: 3,
                header_length: V3_HEADER_LEN,
                ..RawHeader::default()
            },
            backing.as_ref().map(|(n, f)| (n.as_slice(), f.as_str())),
            cs,
        )?;
        let (file, out, dst, repack): (Box<dyn OutputFile>, _, _, _) = match target {
            Target::File(dst) => (
                Box::new(SparseWriter::create(dst, 0, &opts.policy)?),
                None,
                dst.to_path_buf(),
                true,
            ),
            Target::Output(mut out) => {
                if head.len() as u64 > HEAD_REGION {
                    return Err(Error::invalid(format!(
                        "the header and backing file name take {} bytes, more than the \
                         {HEAD_REGION} an output written front to back keeps for them",
                        head.len()
                    )));
                }
                let file = out.create(None)?;
                let dst = out.dst().to_path_buf();
                (file, Some(out), dst, false)
            }
        };
        Ok(Qcow2Sink {
            file,
            out,
            dst,
            size,
            cluster_bits,
            cs,
            l2_entries,
            compress: opts.compress,
            delta: backing.is_some(),
            backing,
            l1: vec![0; l1_size as usize],
            l2: None,
            next_guest: 0,
            next: 1, // cluster 0 is the header
            reftable: Vec::new(),
            counts: BTreeMap::new(),
            packed: None,
            repack,
            stage: (0, Vec::new()),
            queue: Vec::new(),
            unflushed: cs,
            max_shared: u16::MAX,
        })
    }

    /// Refcount entries per refcount block.
    fn per_block(&self) -> u64 {
        self.cs * 8 / REFCOUNT_BITS
    }

    /// Reserve `n` clusters at the end of the file.
    fn alloc(&mut self, n: u64) -> Result<u64> {
        let first = self.next;
        self.next = first
            .checked_add(n)
            .filter(|&e| e << self.cluster_bits < 1 << 56)
            .ok_or_else(|| Error::unsupported("the image would pass 64 PiB"))?;
        Ok(first)
    }

    /// Reserve clusters for something other than compressed data: an output that only
    /// appends writes the compressed bytes gathered so far, and packing starts afresh.
    fn alloc_other(&mut self, n: u64) -> Result<u64> {
        if !self.repack {
            self.flush_stage();
            self.packed = None;
        }
        self.alloc(n)
    }

    /// Queue the refcount blocks whose clusters are all allocated. Each takes a cluster of
    /// its own, counted in whichever block covers it.
    fn emit_refblocks(&mut self) -> Result<()> {
        let per = self.per_block();
        loop {
            let b = self.reftable.len() as u64;
            let start = b * per;
            let end = start + per;
            if end > self.next {
                return Ok(());
            }
            // The cluster packing continues in is counted now: packing starts afresh.
            if let Some(pos) = self.packed {
                if (pos - 1) / self.cs < end || !self.repack {
                    self.packed = None;
                }
            }
            let own = self.alloc_other(1)?;
            let block = self.refblock(start, end);
            self.queue.push((own * self.cs, block));
            self.reftable.push(own * self.cs);
        }
    }

    /// The refcount block of clusters `[start, end)`: one each but for shared compressed
    /// clusters, zero from `self.next` on.
    fn refblock(&mut self, start: u64, end: u64) -> Vec<u8> {
        let mut block = vec![0u8; self.cs as usize];
        for c in start..end.min(self.next) {
            let n = self.counts.remove(&c).unwrap_or(1);
            BigEndian::write_u16(&mut block[((c - start) * 2) as usize..], n);
        }
        block
    }

    /// Move to the L2 table of L1 entry `index` (`None`: none), queueing the one filled.
    fn select_l2(&mut self, index: Option<u64>) -> Result<()> {
        if self.l2.as_ref().map(|t| t.0) == index {
            return Ok(());
        }
        if let Some((i, entries)) = self.l2.take() {
            if entries.iter().any(|&e| e != 0) {
                let c = self.alloc_other(1)?;
                let mut bytes = vec![0u8; self.cs as usize];
                for (k, e) in entries.iter().enumerate() {
                    BigEndian::write_u64(&mut bytes[k * 8..], *e);
                }
                self.queue.push((c * self.cs, bytes));
                self.l1[i as usize] = (c * self.cs) | COPIED;
            }
        }
        self.l2 = index.map(|i| (i, vec![0u64; self.l2_entries as usize]));
        Ok(())
    }

    /// Queue the gathered compressed bytes.
    fn flush_stage(&mut self) {
        if !self.stage.1.is_empty() {
            let bytes = std::mem::take(&mut self.stage.1);
            self.queue.push((self.stage.0, bytes));
        }
    }

    /// Place compressed bytes; returns the L2 entry.
    fn place_packed(&mut self, data: &[u8]) -> Result<u64> {
        let cs = self.cs;
        let len = data.len() as u64;
        // Continue in the last cluster when the bytes fit there, or spill into the clusters
        // that follow it when those are the next free ones.
        let cont = self.packed.filter(|&pos| {
            let last = (pos - 1) / cs;
            let fits = pos + len <= (last + 1) * cs;
            self.counts.get(&last).is_some_and(|&n| n < self.max_shared)
                && (fits || last + 1 == self.next)
        });
        let (at, fresh) = match cont {
            Some(pos) => {
                let last = (pos - 1) / cs;
                let spill = (pos + len).div_ceil(cs).saturating_sub(last + 1);
                (pos, spill)
            }
            None => (self.next * cs, len.div_ceil(cs)),
        };
        self.alloc(fresh)?;
        for c in at / cs..=(at + len - 1) / cs {
            let n = self.counts.entry(c).or_insert(0);
            *n += 1;
        }
        self.packed = Some(at + len);
        if self.stage.0 + self.stage.1.len() as u64 != at || self.stage.1.len() >= STAGE {
            self.flush_stage();
            self.stage.0 = at;
        }
        self.stage.1.extend_from_slice(data);
        // Additional sectors beyond the one holding the first byte, as qemu counts them.
        let sectors = (at + len - 1) / 512 - at / 512;
        let shift = 62 - (self.cluster_bits - 8);
        Ok(COMPRESSED | (sectors << shift) | at)
    }

    /// Record the block at `off` stored as `how`; for a plain cluster, returns where its
    /// bytes go (the caller writes them, joining neighbours into one write).
    fn store(&mut self, off: u64, data: &[u8], how: Block) -> Result<Option<u64>> {
        let cs = self.cs;
        if !off.is_multiple_of(cs)
            || off >= self.size
            || data.len() as u64 > (self.size - off).min(cs)
        {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "block of {} bytes at offset {off} is not a cluster of the {}-byte disk",
                    data.len(),
                    self.size
                ),
            ));
        }
        let g = off / cs;
        if g < self.next_guest {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("block at offset {off} comes after a later one"),
            ));
        }
        self.next_guest = g + 1;
        self.select_l2(Some(g / self.l2_entries))?;
        let mut write = None;
        let entry = match how {
            Block::Zero if self.delta => ZERO,
            Block::Zero => 0,
            Block::Plain => {
                let host = self.alloc_other(1)? * cs;
                write = Some(host);
                host | COPIED
            }
            Block::Packed(bytes) => self.place_packed(&bytes)?,
        };
        if entry != 0 {
            let (_, table) = self.l2.as_mut().expect("selected above");
            table[(g % self.l2_entries) as usize] = entry;
        }
        self.emit_refblocks()?;
        Ok(write)
    }

    /// Write the queued metadata and the plain clusters `plain` (host offset, bytes) in
    /// offset order.
    fn write_batch(&mut self, plain: Vec<(u64, &[u8])>) -> Result<()> {
        let queue = std::mem::take(&mut self.queue);
        let mut ops: Vec<(u64, &[u8], bool)> =
            plain.into_iter().map(|(o, b)| (o, b, true)).collect();
        ops.extend(queue.iter().map(|(o, b)| (*o, b.as_slice(), false)));
        ops.sort_unstable_by_key(|op| op.0);
        for (off, bytes, data) in ops {
            if data {
                // All-zero 4 KiB pieces stay holes; a short last block reads as zero to the
                // cluster's end.
                self.file.write(bytes, off)?;
            } else {
                self.file.write_raw(bytes, off)?;
            }
        }
        let end = self.next * self.cs;
        if end - self.unflushed >= WRITEBACK {
            self.file
                .start_writeback(self.unflushed, end - self.unflushed);
            self.unflushed = end;
        }
        Ok(())
    }

    fn finish_inner(mut self) -> Result<()> {
        let cs = self.cs;
        self.flush_stage();
        self.packed = None;
        self.select_l2(None)?;
        let l1_bytes = self.l1.len() as u64 * 8;
        // An empty disk has no L1 table (offset 0, as qemu writes it).
        let l1_at = match l1_bytes {
            0 => 0,
            n => self.alloc_other(n.div_ceil(cs))?,
        };
        if l1_at != 0 {
            let mut l1 = vec![0u8; l1_bytes as usize];
            for (i, e) in self.l1.iter().enumerate() {
                BigEndian::write_u64(&mut l1[i * 8..], *e);
            }
            self.queue.push((l1_at * cs, l1));
        }
        self.emit_refblocks()?;

        // The last refcount blocks, then the refcount table: `total` clusters in all, with
        // enough table entries for every block, the blocks counting the table and
        // themselves.
        let per = self.per_block();
        let written = self.reftable.len() as u64;
        let mut r = 1u64;
        let (total, blocks) = loop {
            let mut total = self.next + r;
            loop {
                let more = self.next + r + total.div_ceil(per) - written;
                if more == total {
                    break;
                }
                total = more;
            }
            let blocks = total.div_ceil(per);
            let need = (blocks * 8).div_ceil(cs);
            if need <= r {
                break (total, blocks);
            }
            r = need;
        };
        let last_blocks = self.alloc(blocks - written)?;
        let rt_at = self.alloc(r)?;
        debug_assert_eq!(self.next, total);
        for (i, b) in (written..blocks).enumerate() {
            let block = self.refblock(b * per, (b + 1) * per);
            let at = (last_blocks + i as u64) * cs;
            self.queue.push((at, block));
            self.reftable.push(at);
        }
        let mut table = vec![0u8; (r * cs) as usize];
        for (i, off) in self.reftable.iter().enumerate() {
            BigEndian::write_u64(&mut table[i * 8..], *off);
        }
        self.queue.push((rt_at * cs, table));
        self.write_batch(Vec::new())?;

        let raw = RawHeader {
            magic: MAGIC,
            version: 3,
            cluster_bits: self.cluster_bits,
            size: self.size,
            l1_size: self.l1.len() as u32,
            l1_table_offset: l1_at * cs,
            refcount_table_offset: rt_at * cs,
            refcount_table_clusters: r as u32,
            incompatible_features: if self.compress {
                incompat::COMPRESSION
            } else {
                0
            },
            refcount_order: 4,
            header_length: V3_HEADER_LEN,
            compression_type: u8::from(self.compress),
            ..RawHeader::default()
        };
        let head = header_cluster(
            &raw,
            self.backing
                .as_ref()
                .map(|(n, f)| (n.as_slice(), f.as_str())),
            cs,
        )?;
        self.file.write_raw(&head, 0)?;
        self.file.set_len(self.next * cs)?;
        let sealed = self.file.seal()?;
        match self.out {
            Some(out) => out.commit(sealed),
            None => sealed.publish(),
        }
    }
}

impl ImageSink for Qcow2Sink {
    fn block_size(&self) -> u64 {
        self.cs
    }

    /// Runs of clusters come whole: clusters that land side by side in the file are written
    /// with one call.
    fn takes_runs(&self) -> bool {
        true
    }

    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        let cs = self.cs as usize;
        let compress = self.compress;
        // Runs are cut into clusters: (run, start in the run, guest offset, bytes).
        let pieces: Vec<(usize, usize, u64, &[u8])> = blocks
            .iter()
            .enumerate()
            .flat_map(|(r, &(off, data))| {
                data.chunks(cs)
                    .enumerate()
                    .map(move |(i, c)| (r, i * cs, off + (i * cs) as u64, c))
            })
            .collect();
        // Zero detection and compression in parallel; placing stays in order.
        let how: Vec<Block> = pieces
            .par_iter()
            .map(|&(_, _, _, data)| {
                if is_zero(data) {
                    Block::Zero
                } else if !compress {
                    Block::Plain
                } else if data.len() == cs {
                    zstd_cluster(data).map_or(Block::Plain, Block::Packed)
                } else {
                    // qemu inflates whole clusters: the short last block is padded.
                    let mut full = data.to_vec();
                    full.resize(cs, 0);
                    zstd_cluster(&full).map_or(Block::Plain, Block::Packed)
                }
            })
            .collect();
        // Plain clusters, joined where they are side by side in a run and in the file:
        // (host offset, run, start, length).
        let mut plain: Vec<(u64, usize, usize, usize)> = Vec::new();
        for ((run, start, off, data), how) in pieces.into_iter().zip(how) {
            let Some(host) = self
                .store(off, data, how)
                .map_err(|e| e.with_path(&self.dst))?
            else {
                continue;
            };
            match plain.last_mut() {
                Some((h, r, s, l)) if *r == run && *s + *l == start && *h + *l as u64 == host => {
                    *l += data.len()
                }
                _ => plain.push((host, run, start, data.len())),
            }
        }
        let plain = plain
            .into_iter()
            .map(|(h, r, s, l)| (h, &blocks[r].1[s..s + l]))
            .collect();
        let dst = self.dst.clone();
        self.write_batch(plain).map_err(|e| e.with_path(dst))
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let dst = self.dst.clone();
        self.finish_inner().map_err(|e| e.with_path(dst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_io::{FsStore, OpenContext};

    fn open(dst: &Path) -> crate::Qcow2Image {
        let store = FsStore::default();
        crate::Qcow2Image::from_bytes(
            vdisk_io::FileStore::load(&store, dst).unwrap(),
            &OpenContext {
                files: &store,
                path: dst,
                allow_outside_paths: false,
            },
        )
        .unwrap()
    }

    #[test]
    fn odd_sizes_round_up_to_a_sector_and_small_clusters_hold_long_names() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("odd.qcow2");
        let mut sink = Qcow2Sink::create(&dst, 1000, &CreateOptions::default(), None).unwrap();
        sink.put(&[(0, &[7u8; 1000][..])]).unwrap();
        Box::new(sink).finish().unwrap();
        let img = open(&dst);
        assert_eq!(vdisk_core::DiskImage::size(&img), 1024);
        let mut buf = [0u8; 1024];
        vdisk_core::DiskImage::read_at(&img, &mut buf, 0).unwrap();
        assert!(buf[..1000].iter().all(|&b| b == 7) && buf[1000..].iter().all(|&b| b == 0));

        // 512-byte clusters: a 300-byte backing name fits once the optional feature name
        // table is left out; 400 bytes do not.
        let small = CreateOptions {
            cluster_size: Some(512),
            ..CreateOptions::default()
        };
        let name = "n".repeat(300);
        let dst = dir.path().join("small.qcow2");
        let sink =
            Qcow2Sink::create(&dst, 1 << 20, &small, Some((Path::new(&name), "raw"))).unwrap();
        Box::new(sink).finish().unwrap();
        let img = open(&dst);
        assert_eq!(img.header().backing_file.as_deref(), Some(Path::new(&name)));
        let long = "n".repeat(400);
        let dst = dir.path().join("long.qcow2");
        assert!(Qcow2Sink::create(&dst, 1 << 20, &small, Some((Path::new(&long), "raw"))).is_err());
    }

    #[test]
    fn shared_host_clusters_stop_at_the_refcount_limit() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("s.qcow2");
        let opts = CreateOptions {
            compress: true,
            cluster_size: Some(65536),
            ..CreateOptions::default()
        };
        let mut sink = Qcow2Sink::create(&dst, 64 << 20, &opts, None).unwrap();
        sink.max_shared = 3;
        let blocks: Vec<Vec<u8>> = (0..1024u32)
            .map(|i| vec![(i % 250) as u8 + 1; 65536])
            .collect();
        let refs: Vec<(u64, &[u8])> = blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (i as u64 * 65536, b.as_slice()))
            .collect();
        sink.put(&refs).unwrap();
        Box::new(sink).finish().unwrap();
        let img = open(&dst);
        assert!(vdisk_io::Layer::check(&img).is_empty());
        // 1024 tiny clusters, at most 3 per host cluster.
        assert!(std::fs::metadata(&dst).unwrap().len() >= 1024 / 3 * 65536);
        let mut buf = vec![0u8; 65536];
        vdisk_core::DiskImage::read_at(&img, &mut buf, 1000 * 65536).unwrap();
        assert!(buf.iter().all(|&b| b == (1000 % 250) as u8 + 1));
    }
}
