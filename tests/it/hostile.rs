//! Hostile input: damaged and malicious images. Every command must end quickly with exit
//! status 0, 1 or 2, a one-line message on error, no panic or signal, and bounded memory.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::common::*;

/// "Well under a second": held as CPU time, which a machine busy with other tests does not
/// inflate; wall time only has to show there was no hang.
const CPU_LIMIT: Duration = Duration::from_secs(1);
const WALL_LIMIT: Duration = Duration::from_secs(10);
const RSS_LIMIT: u64 = 1 << 30;

/// Run info, map, check and convert on every case (name, bytes) and hold them to the rules.
/// The cases are written as files in `dir` and run in two batches side by side.
fn survive_all(dir: &Path, cases: &[(String, Vec<u8>)]) {
    let names: Vec<String> = (0..cases.len()).map(|i| format!("case{i}.vmdk")).collect();
    let outs: Vec<String> = (0..cases.len()).map(|i| format!("case{i}.raw")).collect();
    for (name, (_, bytes)) in names.iter().zip(cases) {
        put(dir, name, bytes);
    }
    let commands: Vec<(usize, Vec<&str>)> = (0..cases.len())
        .flat_map(|i| {
            let (img, out) = (names[i].as_str(), outs[i].as_str());
            [
                vec!["info", img],
                vec!["map", img],
                vec!["check", img],
                vec!["convert", img, out, "--force"],
            ]
            .into_iter()
            .map(move |a| (i, a))
        })
        .collect();
    let half = commands.len().div_ceil(2);
    std::thread::scope(|scope| {
        for part in commands.chunks(half.max(1)) {
            scope.spawn(move || {
                let args: Vec<Vec<&str>> = part.iter().map(|c| c.1.clone()).collect();
                for ((i, args), r) in part.iter().zip(vdisk_measured(dir, &args)) {
                    check_run(&format!("{}: vdisk {}", cases[*i].0, args.join(" ")), &r);
                }
            });
        }
    });
    for (n, o) in names.iter().zip(&outs) {
        let _ = std::fs::remove_file(dir.join(n));
        let _ = std::fs::remove_file(dir.join(o));
    }
}

/// Run info, map, check and convert on `img` (a file name in `dir`).
fn survive(dir: &Path, img: &str, case: &str) {
    let bytes = std::fs::read(dir.join(img)).unwrap_or_default();
    if dir.join(img).is_dir() {
        let commands: Vec<Vec<&str>> =
            vec![vec!["info", img], vec!["map", img], vec!["check", img]];
        for (args, r) in commands.iter().zip(vdisk_measured(dir, &commands)) {
            check_run(&format!("{case}: vdisk {}", args.join(" ")), &r);
        }
        return;
    }
    survive_all(dir, &[(case.to_string(), bytes)]);
}

fn check_run(what: &str, r: &Run) {
    assert_eq!(r.signal, None, "{what} died: {r:#?}");
    assert!(matches!(r.code, Some(0..=2)), "{what}: {r:#?}");
    assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
    if r.code == Some(2) {
        assert_eq!(r.stderr.lines().count(), 1, "{what}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("vdisk: error: "),
            "{what}: {}",
            r.stderr
        );
    }
    assert!(r.cpu < CPU_LIMIT, "{what} used {:?} of CPU", r.cpu);
    assert!(r.elapsed < WALL_LIMIT, "{what} took {:?}", r.elapsed);
    assert!(r.max_rss < RSS_LIMIT, "{what} used {} bytes", r.max_rss);
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn patch(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + value.len()].copy_from_slice(value);
    b
}

/// qemu-made sources of hostile variants: a sparse image with data and a stream image.
fn sources(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    require_qemu();
    qemu_create_vmdk(dir, "sparse.vmdk", "3M", &["zeroed_grain=on"]);
    qemu_io(
        dir,
        "vmdk",
        "sparse.vmdk",
        &[
            "write -P 0x31 0 200k",
            "write -z 1M 64k",
            "write -P 0x32 2M 4k",
        ],
    );
    std::fs::write(dir.join("src.raw"), pattern(40, 3 << 20)).unwrap();
    qemu_to_vmdk(dir, "streamOptimized", "src.raw", "stream.vmdk");
    let vmware = crate::stream_spec::vmware_stream(&pattern(41, 1 << 20));
    vec![
        ("sparse", std::fs::read(dir.join("sparse.vmdk")).unwrap()),
        ("stream", std::fs::read(dir.join("stream.vmdk")).unwrap()),
        ("vmware", vmware),
    ]
}

#[test]
fn truncated_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (name, bytes) in sources(dir) {
        let n = bytes.len();
        for cut in [
            0,
            1,
            4,
            100,
            511,
            512,
            513,
            1024,
            10_752,
            65_536,
            n / 2,
            n - 512,
            n - 1,
        ] {
            if cut >= n {
                continue;
            }
            put(dir, "t.vmdk", &bytes[..cut]);
            survive(dir, "t.vmdk", &format!("{name} cut at {cut}"));
        }
    }
}

/// (offset, width) of every header field after the magic.
const FIELDS: [(&str, usize, usize); 12] = [
    ("version", 4, 4),
    ("flags", 8, 4),
    ("capacity", 12, 8),
    ("grainSize", 20, 8),
    ("descriptorOffset", 28, 8),
    ("descriptorSize", 36, 8),
    ("numGTEsPerGT", 44, 4),
    ("rgdOffset", 48, 8),
    ("gdOffset", 56, 8),
    ("overHead", 64, 8),
    ("uncleanShutdown", 72, 1),
    ("compressAlgorithm", 77, 2),
];

#[test]
fn every_header_field_at_zero_one_and_maximum() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (name, bytes) in sources(dir) {
        // The footer's copy of the header (VMware streams) gets the same treatment.
        let mut at_list = vec![0usize];
        if name == "vmware" {
            at_list.push(bytes.len() - 1024);
        }
        for base in at_list {
            for (field, off, width) in FIELDS {
                for value in [0u64, 1, u64::MAX] {
                    let v = &value.to_le_bytes()[..width];
                    put(dir, "h.vmdk", &patch(&bytes, base + off, v));
                    survive(
                        dir,
                        "h.vmdk",
                        &format!("{name} header@{base} {field}={value:#x}"),
                    );
                }
            }
            for grain in [3u64, 127, 129, 1000] {
                put(
                    dir,
                    "g.vmdk",
                    &patch(&bytes, base + 20, &grain.to_le_bytes()),
                );
                let case = format!("{name} grain size {grain}");
                survive(dir, "g.vmdk", &case);
                let r = vdisk_in(dir, &["info", "g.vmdk"]);
                assert!(r.stderr.contains("power of two"), "{case}: {}", r.stderr);
            }
        }
    }
}

#[test]
fn tables_and_grains_pointing_past_the_end_or_into_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_, sparse) = sources(dir).remove(0);
    let gd = u64::from_le_bytes(sparse[56..64].try_into().unwrap()) as usize * 512;
    let rgd = u64::from_le_bytes(sparse[48..56].try_into().unwrap()) as usize * 512;
    let table = u32::from_le_bytes(sparse[gd..gd + 4].try_into().unwrap()) as usize * 512;
    let rtable = u32::from_le_bytes(sparse[rgd..rgd + 4].try_into().unwrap()) as usize * 512;
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for v in [
        1u32,
        2,
        21,
        (sparse.len() / 512) as u32,
        u32::MAX - 1,
        u32::MAX,
    ] {
        // The directory (both copies) pointing at the header, the descriptor, the end, beyond.
        let b = patch(&patch(&sparse, gd, &v.to_le_bytes()), rgd, &v.to_le_bytes());
        cases.push((format!("both directories -> {v}"), b));
        // Grain 0 (both copies of its table) pointing into metadata or past the end.
        let b = patch(
            &patch(&sparse, table, &v.to_le_bytes()),
            rtable,
            &v.to_le_bytes(),
        );
        cases.push((format!("grain 0 -> {v}"), b));
        // The directory pointing into the grain directory itself.
        let b = patch(&sparse, gd + 4, &((gd / 512) as u32).to_le_bytes());
        cases.push((format!("table 1 -> the directory ({v})"), b));
    }
    survive_all(dir, &cases);
}

/// A grain whose deflate stream inflates to more than a grain: zeros compress 1000 to 1, so
/// 4 MiB of zeros fit where a grain of random data was.
#[test]
fn compressed_grains_that_inflate_past_a_grain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let all = sources(dir);
    for (name, bytes) in all.into_iter().filter(|(n, _)| *n != "sparse") {
        // The first grain marker sits at the overhead (qemu and VMware both start grains there).
        let overhead = u64::from_le_bytes(bytes[64..72].try_into().unwrap()) as usize * 512;
        let old_size =
            u32::from_le_bytes(bytes[overhead + 8..overhead + 12].try_into().unwrap()) as usize;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&vec![0u8; 4 << 20]).unwrap();
        let bomb = z.finish().unwrap();
        assert!(bomb.len() <= old_size, "{} > {old_size}", bomb.len());
        let mut b = patch(&bytes, overhead + 8, &(bomb.len() as u32).to_le_bytes());
        b[overhead + 12..overhead + 12 + bomb.len()].copy_from_slice(&bomb);
        put(dir, "bomb.vmdk", &b);
        survive(dir, "bomb.vmdk", &format!("{name}: deflate bomb"));
        let r = vdisk_in(dir, &["convert", "bomb.vmdk", "out.raw", "--force"]);
        assert!(
            r.stderr.contains("inflates past the grain size"),
            "{name}: {}",
            r.stderr
        );
        // A grain whose size field claims more bytes than the file holds.
        let b = patch(&bytes, overhead + 8, &u32::MAX.to_le_bytes());
        put(dir, "big.vmdk", &b);
        survive(dir, "big.vmdk", &format!("{name}: grain size past the end"));
        // Garbage instead of a deflate stream.
        let mut b = bytes.clone();
        b[overhead + 12..overhead + 76].fill(0xee);
        put(dir, "junk.vmdk", &b);
        survive(dir, "junk.vmdk", &format!("{name}: junk grain"));
    }
}

#[test]
fn descriptors_of_200000_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("d.flat"), pattern(50, 4096)).unwrap();
    let head = "# Disk DescriptorFile\nversion=1\nCID=11111111\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n";
    let lines = 200_000;
    let variants: Vec<(&str, String)> = vec![
        (
            "zero extents",
            format!("{head}{}", "RW 8 ZERO\n".repeat(lines)),
        ),
        // One sector each: 100 MiB of real data to convert, all read from one 4 KiB file.
        (
            "flat extents of one file",
            format!("{head}{}", "RW 1 FLAT \"d.flat\" 0\n".repeat(lines)),
        ),
        (
            "comments",
            format!("{head}{}RW 8 ZERO\n", "# comment line\n".repeat(lines)),
        ),
        (
            "ddb keys",
            format!("{head}RW 8 ZERO\n{}", "ddb.key = \"value\"\n".repeat(lines)),
        ),
        (
            "garbage at the end",
            format!("{head}{}garbage\n", "RW 8 ZERO\n".repeat(lines)),
        ),
        (
            "missing files",
            format!("{head}{}", "RW 8 FLAT \"nope.flat\" 0\n".repeat(lines)),
        ),
        (
            "one huge line",
            format!("{head}RW 8 ZERO\nddb.x = \"{}\"\n", "y".repeat(6_000_000)),
        ),
    ];
    let cases: Vec<(String, Vec<u8>)> = variants
        .into_iter()
        .map(|(c, t)| (c.to_string(), t.into_bytes()))
        .collect();
    survive_all(dir, &cases);
    // The 200,000 ZERO extents still make a disk of the right size.
    put(
        dir,
        "z.vmdk",
        format!("{head}{}", "RW 8 ZERO\n".repeat(lines)).as_bytes(),
    );
    let r = vdisk_in(dir, &["info", "--json", "z.vmdk"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["virtual_size"], lines as u64 * 8 * 512);
}

#[test]
fn non_vmdk_inputs_and_forced_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    put(dir, "empty", b"");
    survive(dir, "empty", "empty file");
    put(dir, "cowd.vmdk", b"COWD\x01\x00\x00\x00 and some bytes");
    survive(dir, "cowd.vmdk", "COWD");
    let r = vdisk_in(dir, &["-f", "vmdk", "info", "empty"]);
    r.expect_code(2, "empty forced as vmdk");
    assert!(
        r.stderr.starts_with("vdisk: error: empty: "),
        "{}",
        r.stderr
    );
    let r = vdisk_in(dir, &["info", "does-not-exist"]);
    r.expect_code(2, "missing");
    assert!(
        r.stderr
            .starts_with("vdisk: error: does-not-exist: cannot open"),
        "{}",
        r.stderr
    );
    std::fs::create_dir(dir.join("adir")).unwrap();
    survive(dir, "adir", "a directory");
}
