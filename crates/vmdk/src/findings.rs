//! What a check of a VMDK finds, typed: a leaf module that the extents (which note problems
//! while opening) and the checks share.

use std::fmt;
use std::path::PathBuf;

pub use vdisk_core::Severity;

/// Which of a sparse extent's two grain directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directory {
    /// The grain directory in use.
    Primary,
    /// The redundant copy.
    Redundant,
}

impl fmt::Display for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Directory::Primary => "grain directory",
            Directory::Redundant => "redundant grain directory",
        })
    }
}

/// A byte range of a sparse extent that holds metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The header.
    Header,
    /// The embedded descriptor.
    Descriptor,
    /// A grain directory.
    Directory(Directory),
    /// A grain table, by directory entry.
    Table(u64, Directory),
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::Header => f.write_str("the header"),
            Region::Descriptor => f.write_str("the embedded descriptor"),
            Region::Directory(d) => write!(f, "the {d}"),
            Region::Table(i, d) => write!(f, "grain table {i} of the {d}"),
        }
    }
}

/// What a check found; the text is in `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The image could not be opened at all (a damaged header, a missing extent or parent).
    Unopenable(String),
    /// A primary directory entry was empty or pointed outside the file; the redundant
    /// directory's table is used.
    EntryFromRedundant {
        /// The directory entry.
        entry: u64,
        /// Empty (rather than outside the file).
        empty: bool,
    },
    /// The primary directory lies outside the file; the redundant one is used.
    DirectoryFromRedundant,
    /// The header's uncleanShutdown flag is set.
    UncleanShutdown,
    /// A directory entry names a table past the end of the file.
    TablePastEnd {
        /// Which directory.
        directory: Directory,
        /// The entry.
        entry: u64,
        /// The table's sector.
        sector: u32,
        /// The file's length.
        file_len: u64,
    },
    /// Two metadata regions overlap.
    Overlap {
        /// The later region.
        region: Region,
        /// The region it overlaps.
        other: Region,
    },
    /// The directories disagree on whether a table exists.
    DirectoriesDisagree {
        /// The entry.
        entry: u64,
        /// The primary's value.
        primary: u32,
        /// The redundant copy's value.
        redundant: u32,
    },
    /// A table and its redundant copy disagree on whether a grain is allocated.
    TablesDisagree {
        /// The table's directory entry.
        table: u64,
        /// The first grain they disagree on.
        grain: u64,
    },
    /// A grain starts past the end of the file.
    GrainPastEnd {
        /// The grain.
        grain: u64,
        /// Its byte offset in the file.
        offset: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A grain points into the header.
    GrainInHeader {
        /// The grain.
        grain: u64,
        /// Its byte offset in the file.
        offset: u64,
    },
    /// A grain lies inside a metadata region.
    GrainInMetadata {
        /// The grain.
        grain: u64,
        /// Its byte offset in the file.
        offset: u64,
        /// The region.
        region: Region,
    },
    /// A compressed grain's marker or stream is damaged.
    BadCompressedGrain {
        /// The grain.
        grain: u64,
        /// What is wrong.
        error: String,
    },
    /// A compressed grain's marker names another sector than its table entry.
    MarkerMismatch {
        /// The grain.
        grain: u64,
        /// The sector the marker names.
        marker: u64,
        /// The sector the table implies.
        table: u64,
    },
    /// A grain runs past the end of the file.
    GrainRunsPastEnd {
        /// The grain.
        grain: u64,
        /// Its byte offset in the file.
        offset: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A streamOptimized image in VMware's layout lacks its end-of-stream marker.
    NoEndOfStream,
    /// A flat extent file is shorter than its extent line (the rest reads as zero).
    FlatExtentShort {
        /// The file's length.
        len: u64,
        /// The bytes the extent line needs.
        need: u64,
    },
    /// A problem in an ESX snapshot extent (SEsparse, COWD), in words.
    SnapshotExtent(String),
    /// More findings of one kind than are listed one by one.
    More {
        /// How many more.
        count: u64,
        /// Of what.
        what: &'static str,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unopenable(e) => write!(f, "cannot be opened: {e}"),
            Problem::EntryFromRedundant { entry, empty } => write!(
                f,
                "grain directory entry {entry} is {}; using the redundant directory's table",
                if *empty { "empty" } else { "outside the file" }
            ),
            Problem::DirectoryFromRedundant => {
                f.write_str("grain directory lies outside the file; using the redundant directory")
            }
            Problem::UncleanShutdown => {
                f.write_str("uncleanShutdown is set: the image was not closed cleanly")
            }
            Problem::TablePastEnd {
                directory,
                entry,
                sector,
                file_len,
            } => write!(
                f,
                "{directory} entry {entry}: grain table at sector {sector} lies past the end of the file ({file_len} bytes)"
            ),
            Problem::Overlap { region, other } => write!(f, "{region} overlaps {other}"),
            Problem::DirectoriesDisagree {
                entry,
                primary,
                redundant,
            } => write!(
                f,
                "grain directory and redundant directory disagree at entry {entry} ({primary} vs {redundant})"
            ),
            Problem::TablesDisagree { table, grain } => write!(
                f,
                "grain table {table} and its redundant copy disagree on grain {grain}"
            ),
            Problem::GrainPastEnd {
                grain,
                offset,
                file_len,
            } => write!(
                f,
                "grain {grain}: offset {offset} is past the end of the file ({file_len} bytes)"
            ),
            Problem::GrainInHeader { grain, offset } => {
                write!(f, "grain {grain}: offset {offset} lies inside the header")
            }
            Problem::GrainInMetadata {
                grain,
                offset,
                region,
            } => write!(f, "grain {grain}: offset {offset} lies inside {region}"),
            Problem::BadCompressedGrain { grain, error } => write!(f, "grain {grain}: {error}"),
            Problem::MarkerMismatch {
                grain,
                marker,
                table,
            } => write!(
                f,
                "grain {grain}: marker says sector {marker}, the table says sector {table}"
            ),
            Problem::GrainRunsPastEnd {
                grain,
                offset,
                file_len,
            } => write!(
                f,
                "grain {grain}: offset {offset} runs past the end of the file ({file_len} bytes)"
            ),
            Problem::NoEndOfStream => {
                f.write_str("streamOptimized image does not end with an end-of-stream marker")
            }
            Problem::FlatExtentShort { len, need } => write!(
                f,
                "flat extent file is {len} bytes, shorter than the {need} bytes its extent line needs (the rest reads as zero)"
            ),
            Problem::SnapshotExtent(m) => f.write_str(m),
            Problem::More { count, what } => write!(f, "… and {count} more {what}"),
        }
    }
}

/// One finding of a check.
#[derive(Debug, Clone)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// The file it is about.
    pub file: PathBuf,
    /// What is wrong.
    pub problem: Problem,
}

impl Finding {
    /// The finding as every format reports one.
    pub fn to_core(&self) -> vdisk_core::Finding {
        vdisk_core::Finding {
            severity: self.severity,
            file: self.file.clone(),
            message: self.problem.to_string(),
        }
    }
}
