//! Real-world VMDK files: what VMware's tools (ovftool, Workstation and ESXi on Windows),
//! hand-rebuilt descriptors and VirtualBox write, beyond what qemu-img makes itself.
//!
//! Where qemu-img reads a file, it is the reference: vdisk reads the same bytes and maps the
//! same data. Where qemu-img does not read it (an OVA archive, a raw-device descriptor, a
//! name in a Windows code page resolved as `encoding` says), each test says where its
//! expectation comes from.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// Run `vdisk ARGS` in `dir`, with arguments that may not be UTF-8.
fn vdisk_os(dir: &Path, args: &[&OsStr]) -> Run {
    let mut c = Command::new(vdisk_bin());
    c.args(args).current_dir(dir);
    run(c)
}

/// Parse a command's stdout as one JSON document, naming the command when it is not.
fn json_of(r: &Run, what: &str) -> Value {
    r.expect_code(0, what);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not one JSON document ({e}): {}",
            r.stdout
        )
    })
}

/// The error of a run that failed: exactly one line, `vdisk: error: …`.
fn one_line_error(r: &Run, code: i32, what: &str) -> String {
    r.expect_code(code, what);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{what}: not one line: {:?}", r.stderr);
    assert!(
        lines[0].starts_with("vdisk: error: "),
        "{what}: {}",
        lines[0]
    );
    lines[0].to_string()
}

/// A raw disk of `size` bytes with data in a few places and holes elsewhere (written with
/// qemu-io, so that qemu-made images of it have allocated and unallocated grains).
fn sample_raw(dir: &Path, name: &str, size: &str, seed: u8) {
    qemu_img(dir, &["create", "-q", "-f", "raw", name, size]);
    qemu_io(
        dir,
        "raw",
        name,
        &[
            &format!("write -P {} 0 192k", seed),
            &format!("write -P {} 1m 64k", seed.wrapping_add(1)),
            &format!("write -P {} 1536k 4k", seed.wrapping_add(2)),
        ],
    );
}

/// `qemu-img convert -O raw` of `img` (forced to `fmt` when given), and vdisk's conversion of
/// `ours` (extra vdisk args before `convert`), byte for byte the same.
fn same_as_qemu(dir: &Path, img: &str, fmt: Option<&str>, ours: &str, vdisk_args: &[&str]) {
    let tag = format!("{}{}", vdisk_args.join("_"), ours).replace(['/', '-'], "_");
    let q = format!("{tag}.qemu.raw");
    let v = format!("{tag}.vdisk.raw");
    let mut qargs = vec!["convert"];
    if let Some(f) = fmt {
        qargs.extend(["-f", f]);
    }
    qargs.extend(["-O", "raw", img, &q]);
    qemu_img(dir, &qargs);
    let mut args: Vec<&str> = vdisk_args.to_vec();
    args.extend(["convert", ours, &v]);
    vdisk_in(dir, &args).expect_code(0, &format!("vdisk convert {ours}"));
    assert_same_bytes(&dir.join(&q), &dir.join(&v));
}

/// A map as (start, length, data, zero), neighbours of the same kind joined; an entry qemu
/// marks zero counts as zero whatever its data flag (qemu marks the tail of a short flat
/// file both).
fn map_kinds(v: &Value) -> Vec<(u64, u64, bool, bool)> {
    let mut out: Vec<(u64, u64, bool, bool)> = Vec::new();
    for e in v.as_array().unwrap() {
        let (s, l) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        let z = e["zero"].as_bool().unwrap();
        let d = e["data"].as_bool().unwrap() && !z;
        match out.last_mut() {
            Some(last) if last.0 + last.1 == s && (last.2, last.3) == (d, z) => last.1 += l,
            _ => out.push((s, l, d, z)),
        }
    }
    out
}

fn vdisk_map(dir: &Path, img: &str, vdisk_args: &[&str]) -> Vec<(u64, u64, bool, bool)> {
    let mut args: Vec<&str> = vdisk_args.to_vec();
    args.extend(["map", img, "--json"]);
    map_kinds(&json_of(&vdisk_in(dir, &args), &format!("vdisk map {img}")))
}

fn qemu_map(dir: &Path, img: &str, fmt: Option<&str>) -> Vec<(u64, u64, bool, bool)> {
    let mut args = vec!["map", "--output=json"];
    if let Some(f) = fmt {
        args.extend(["-f", f]);
    }
    args.push(img);
    map_kinds(&serde_json::from_str(&qemu_img(dir, &args)).unwrap())
}

/// A minimal OVF descriptor naming `disks` (only its presence matters to vdisk: disks are
/// found by content).
fn ovf(disks: &[&str]) -> String {
    let mut refs = String::new();
    for (i, d) in disks.iter().enumerate() {
        refs.push_str(&format!(
            "    <File ovf:href=\"{d}\" ovf:id=\"file{}\"/>\n",
            i + 1
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Envelope xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\">\n  <References>\n{refs}  </References>\n</Envelope>\n"
    )
}

/// Make `name` (an OVA: the .ovf first, then `members`) with GNU tar in ustar format, as
/// ovftool lays appliances out.
fn make_ova(dir: &Path, name: &str, members: &[&str]) {
    std::fs::write(dir.join("appliance.ovf"), ovf(members)).unwrap();
    let mut args = vec!["--format=ustar", "-cf", name, "appliance.ovf"];
    args.extend(members);
    tool(dir, "tar", &args);
}

/// A VMware-layout streamOptimized file (vdisk's writer) with an ovftool metadata marker of
/// type 4 and two sectors of payload put in front of the footer marker (see
/// fuzz/make-seeds-3.sh): `val` is the number of sectors that follow the marker.
fn with_type4_marker(src: &Path, dst: &Path) {
    let bytes = std::fs::read(src).unwrap();
    let cut = bytes.len() - 1536; // footer marker, footer, end-of-stream marker
    let mut out = bytes[..cut].to_vec();
    let mut marker = [0u8; 512];
    marker[..8].copy_from_slice(&2u64.to_le_bytes());
    marker[12..16].copy_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&marker);
    out.extend_from_slice(&pattern(4, 1024));
    out.extend_from_slice(&bytes[cut..]);
    std::fs::write(dst, out).unwrap();
}

/// Item 4: ovftool's type-4 metadata markers are skipped by their size, whether the stream
/// is a file (read through its grain directory, and walked by check) or a pipe.
#[test]
fn type4_metadata_markers_read_from_a_file_and_from_a_pipe() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sample_raw(d, "disk.raw", "4M", 0x31);
    vdisk_in(
        d,
        &[
            "-q",
            "convert",
            "disk.raw",
            "vmware.vmdk",
            "-O",
            "vmdk",
            "--subformat",
            "streamOptimized",
        ],
    )
    .expect_code(0, "vdisk convert to streamOptimized");
    with_type4_marker(&d.join("vmware.vmdk"), &d.join("ovftool.vmdk"));
    // qemu-img reads it (through the footer's directory), and is the reference.
    same_as_qemu(d, "ovftool.vmdk", None, "ovftool.vmdk", &[]);
    assert_same_bytes(&d.join("disk.raw"), &d.join("ovftool.vmdk.vdisk.raw"));
    assert_eq!(
        vdisk_map(d, "ovftool.vmdk", &[]),
        qemu_map(d, "ovftool.vmdk", None)
    );
    vdisk_in(d, &["check", "ovftool.vmdk"]).expect_code(0, "check walks past the marker");
    // From a pipe, as `tar -xOf appliance.ova disk.vmdk | vdisk convert - out.raw`.
    let mut c = Command::new("sh");
    c.current_dir(d).args([
        "-c",
        &format!(
            "cat ovftool.vmdk | '{}' -q convert - piped.raw",
            vdisk_bin().display()
        ),
    ]);
    run(c).expect_code(0, "vdisk convert - from a pipe");
    assert_same_bytes(&d.join("disk.raw"), &d.join("piped.raw"));
}

/// Item 5: an OVA of one disk reads as the VMDK inside it does once extracted (qemu-img
/// reads the extracted one): info, convert, map, check, diff, backup and restore.
#[test]
fn an_ova_reads_in_place_like_its_extracted_disk() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sample_raw(d, "disk.raw", "4M", 0x41);
    qemu_to_vmdk(d, "streamOptimized", "disk.raw", "disk1.vmdk");
    make_ova(d, "app.ova", &["disk1.vmdk"]);
    same_as_qemu(d, "disk1.vmdk", None, "app.ova", &[]);
    assert_eq!(
        vdisk_map(d, "app.ova", &[]),
        qemu_map(d, "disk1.vmdk", None)
    );
    assert_eq!(
        vdisk_map(d, "app.ova", &[]),
        vdisk_map(d, "disk1.vmdk", &[])
    );

    let info = json_of(&vdisk_in(d, &["info", "app.ova", "--json"]), "info app.ova");
    let alone = json_of(
        &vdisk_in(d, &["info", "disk1.vmdk", "--json"]),
        "info disk1.vmdk",
    );
    for k in [
        "format",
        "subformat",
        "virtual_size",
        "allocated",
        "grain_size",
        "cid",
    ] {
        assert_eq!(info[k], alone[k], "{k}");
    }
    let a = &info["archive"];
    assert_eq!(a["format"], "ova");
    assert_eq!(a["members"], 2);
    assert_eq!(a["opened"], "disk1.vmdk");
    assert_eq!(a["disks"][0]["name"], "disk1.vmdk");
    let member = std::fs::metadata(d.join("disk1.vmdk")).unwrap().len();
    assert_eq!(a["disks"][0]["size"], member);
    assert_eq!(a["disks"][0]["virtual_size"], 4 << 20);
    assert_eq!(a["disks"][0]["subformat"], "streamOptimized");
    let text = vdisk_in(d, &["info", "app.ova"]).stdout;
    assert!(
        text.contains("disk1.vmdk") && text.contains("(opened)"),
        "{text}"
    );

    vdisk_in(d, &["check", "app.ova"]).expect_code(0, "check app.ova");
    vdisk_in(d, &["diff", "app.ova", "disk1.vmdk"]).expect_code(0, "diff: identical");
    vdisk_in(d, &["diff", "disk.raw", "app.ova"]).expect_code(0, "diff: identical to the raw");

    // Read in place: the archive is not copied (no new files, and the mapped archive is
    // all the disk usage reported is the member's share).
    let before: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    vdisk_in(d, &["map", "app.ova"]).expect_code(0, "map");
    let after: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before.len(), after.len());
    assert_eq!(info["disk_usage"], member);

    // Backup: full, then an incremental point of the same disk; restore is the disk.
    vdisk_in(d, &["-q", "backup", "app.ova", "repo"]).expect_code(0, "backup 1");
    vdisk_in(d, &["-q", "backup", "app.ova", "repo"]).expect_code(0, "backup 2");
    vdisk_in(d, &["-q", "restore", "repo", "restored.raw"]).expect_code(0, "restore");
    assert_same_bytes(&d.join("disk.raw"), &d.join("restored.raw"));
    let list = json_of(&vdisk_in(d, &["list", "repo", "--json"]), "list");
    assert_eq!(list["points"].as_array().unwrap().len(), 2);
}

/// Item 5 with two disks: `--disk` picks one; without it every command but `info` is a
/// one-line error that lists the names; `info` lists the disks. The second disk is a
/// VMware-layout stream with a type-4 marker, as ovftool writes appliances.
#[test]
fn an_ova_of_two_disks_needs_disk_to_pick_one() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sample_raw(d, "a.raw", "4M", 0x51);
    sample_raw(d, "b.raw", "2M", 0x61);
    qemu_to_vmdk(d, "streamOptimized", "a.raw", "system.vmdk");
    vdisk_in(
        d,
        &[
            "-q",
            "convert",
            "b.raw",
            "vmware.vmdk",
            "-O",
            "vmdk",
            "--subformat",
            "streamOptimized",
        ],
    )
    .expect_code(0, "vdisk convert");
    with_type4_marker(&d.join("vmware.vmdk"), &d.join("data.vmdk"));
    make_ova(d, "two.ova", &["system.vmdk", "data.vmdk"]);

    let info = json_of(&vdisk_in(d, &["info", "two.ova", "--json"]), "info two.ova");
    assert_eq!(info["format"], "ova");
    assert_eq!(info["archive"]["opened"], Value::Null);
    let disks = info["archive"]["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0]["name"], "system.vmdk");
    assert_eq!(disks[0]["virtual_size"], 4 << 20);
    assert_eq!(disks[1]["name"], "data.vmdk");
    assert_eq!(disks[1]["virtual_size"], 2 << 20);
    assert!(vdisk_in(d, &["info", "two.ova"])
        .stdout
        .contains("--disk NAME"));

    for args in [
        vec!["convert", "two.ova", "x.raw"],
        vec!["map", "two.ova"],
        vec!["diff", "two.ova", "a.raw"],
        vec!["backup", "two.ova", "repo"],
    ] {
        let e = one_line_error(&vdisk_in(d, &args), 2, &format!("{args:?}"));
        assert!(
            e.contains("two.ova")
                && e.contains("\"system.vmdk\", \"data.vmdk\"")
                && e.contains("--disk NAME"),
            "{e}"
        );
    }
    let e = one_line_error(
        &vdisk_in(d, &["--disk", "nope.vmdk", "map", "two.ova"]),
        2,
        "--disk nope",
    );
    assert!(
        e.contains("no disk \"nope.vmdk\"") && e.contains("\"data.vmdk\""),
        "{e}"
    );

    tool(d, "tar", &["-xf", "two.ova", "--one-top-level=x"]);
    same_as_qemu(
        d,
        "x/system.vmdk",
        None,
        "two.ova",
        &["--disk", "system.vmdk"],
    );
    same_as_qemu(d, "x/data.vmdk", None, "two.ova", &["--disk", "data.vmdk"]);
    assert_same_bytes(
        &d.join("b.raw"),
        &d.join("__disk_data.vmdktwo.ova.vdisk.raw"),
    );
    assert_eq!(
        vdisk_map(d, "two.ova", &["--disk", "data.vmdk"]),
        qemu_map(d, "x/data.vmdk", None)
    );
    let info = json_of(
        &vdisk_in(d, &["--disk", "data.vmdk", "info", "two.ova", "--json"]),
        "info --disk",
    );
    assert_eq!(info["archive"]["opened"], "data.vmdk");
    assert_eq!(info["virtual_size"], 2 << 20);

    // The backup source is the archive and the disk: the other disk of the same archive
    // is another disk, refused in the same repository unless forced.
    vdisk_in(
        d,
        &["-q", "--disk", "system.vmdk", "backup", "two.ova", "repo"],
    )
    .expect_code(0, "backup system");
    let r = vdisk_in(
        d,
        &["-q", "--disk", "data.vmdk", "backup", "two.ova", "repo"],
    );
    one_line_error(&r, 2, "backup of the other disk into the same repository");
    vdisk_in(
        d,
        &["-q", "--disk", "system.vmdk", "backup", "two.ova", "repo"],
    )
    .expect_code(0, "backup system again");
}

/// Rewrite the checksum of the tar header at `at` after a change (a test crafting hostile
/// archives that tar's own checks would catch otherwise).
fn fix_checksum(bytes: &mut [u8], at: usize) {
    let h = &mut bytes[at..at + 512];
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let field = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(field.as_bytes());
}

/// Item 5, hostile archives: cut, sizes past the end, a huge base-256 size, names that climb
/// out, a damaged header, no disk at all: each a one-line error naming the archive, quickly,
/// without a panic; `check` reports a damaged archive as a finding (exit 1).
#[test]
fn hostile_ovas_are_one_line_errors() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sample_raw(d, "disk.raw", "2M", 0x71);
    qemu_to_vmdk(d, "streamOptimized", "disk.raw", "disk1.vmdk");
    make_ova(d, "good.ova", &["disk1.vmdk"]);
    let good = std::fs::read(d.join("good.ova")).unwrap();
    // The disk's header is the second one (after the .ovf and its data).
    let ovf_len = std::fs::metadata(d.join("appliance.ovf")).unwrap().len() as usize;
    let disk_hdr = 512 + ovf_len.div_ceil(512) * 512;
    assert_eq!(&good[disk_hdr..disk_hdr + 10], b"disk1.vmdk");

    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push((
        "cut.ova",
        good[..good.len() / 2].to_vec(),
        "runs past the end",
    ));
    cases.push((
        "cut-header.ova",
        good[..disk_hdr + 100].to_vec(),
        "cut short",
    ));
    let mut big = good.clone();
    big[disk_hdr + 124..disk_hdr + 136].copy_from_slice(b"77777777777\0");
    fix_checksum(&mut big, disk_hdr);
    cases.push(("past-end.ova", big, "runs past the end"));
    let mut huge = good.clone();
    huge[disk_hdr + 124] = 0x80;
    huge[disk_hdr + 125..disk_hdr + 136].fill(0xff);
    fix_checksum(&mut huge, disk_hdr);
    cases.push(("huge.ova", huge, "runs past the end"));
    let mut evil = good.clone();
    evil[disk_hdr..disk_hdr + 100].fill(0);
    evil[disk_hdr..disk_hdr + 17].copy_from_slice(b"../../disk1.vmdk\0");
    fix_checksum(&mut evil, disk_hdr);
    cases.push(("traversal.ova", evil, "climbs out"));
    let mut bad_sum = good.clone();
    bad_sum[disk_hdr + 3] ^= 0x20;
    cases.push(("checksum.ova", bad_sum, "checksum"));
    let mut nonum = good.clone();
    nonum[disk_hdr + 124..disk_hdr + 136].copy_from_slice(b"12x45678901\0");
    fix_checksum(&mut nonum, disk_hdr);
    cases.push(("nan.ova", nonum, "not a number"));
    tool(
        d,
        "tar",
        &["--format=ustar", "-cf", "nodisk.ova", "appliance.ovf"],
    );
    cases.push((
        "nodisk.ova",
        std::fs::read(d.join("nodisk.ova")).unwrap(),
        "holds no disk",
    ));
    // What ovftool makes that cannot be read in place: gzip-compressed disks (--compress) and
    // disks split in chunks (--chunkSize), each refused with what to do.
    tool(d, "gzip", &["-k", "disk1.vmdk"]);
    tool(
        d,
        "tar",
        &[
            "--format=ustar",
            "-cf",
            "gz.ova",
            "appliance.ovf",
            "disk1.vmdk.gz",
        ],
    );
    cases.push(("gz.ova", std::fs::read(d.join("gz.ova")).unwrap(), "gzip"));
    tool(
        d,
        "split",
        &["-b", "65536", "-d", "-a", "9", "disk1.vmdk", "disk1.vmdk."],
    );
    tool(
        d,
        "tar",
        &[
            "--format=ustar",
            "-cf",
            "chunks.ova",
            "appliance.ovf",
            "disk1.vmdk.000000000",
            "disk1.vmdk.000000001",
        ],
    );
    cases.push((
        "chunks.ova",
        std::fs::read(d.join("chunks.ova")).unwrap(),
        "chunkSize",
    ));
    for (name, bytes, want) in &cases {
        std::fs::write(d.join(name), bytes).unwrap();
        for cmd in ["info", "map"] {
            let r = vdisk_in(d, &[cmd, name]);
            let e = one_line_error(&r, 2, &format!("{cmd} {name}"));
            assert!(e.contains(name) && e.contains(want), "{cmd} {name}: {e}");
            assert!(
                r.elapsed < Duration::from_secs(20),
                "{name}: {:?}",
                r.elapsed
            );
        }
        let r = vdisk_in(d, &["check", name, "--json"]);
        if ["nodisk.ova", "gz.ova", "chunks.ova"].contains(name) {
            one_line_error(&r, 2, "check of an archive without a disk");
        } else {
            r.expect_code(1, &format!("check {name}: damage is a finding"));
            let v: Value = serde_json::from_str(&r.stdout).unwrap();
            assert_eq!(v["clean"], false, "{name}");
        }
    }
}

/// Item 6: descriptors made by hand (no `# Disk DescriptorFile` line, a first key of
/// `CID=` or `createType=`, a UTF-8 byte-order mark, CRLF lines) read as VMDK, equal to what
/// qemu-img reads with `-f vmdk`. qemu 10.0.2's probe (block/vmdk.c `vmdk_probe`) detects only
/// a first line of exactly `version=1|2|3` (after comments and lines of spaces): the others
/// it reads as raw unless forced; vdisk detects them all by content.
#[test]
fn hand_made_descriptors_are_recognised_by_content() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(d.join("disk-flat.vmdk"), pattern(6, 1 << 20)).unwrap();
    let body =
        "parentCID=ffffffff\nRW 2048 FLAT \"disk-flat.vmdk\" 0\nddb.adapterType = \"lsilogic\"\n";
    let cases: [(&str, String, bool); 7] = [
        ("version-first", format!("version=1\nCID=0badcafe\ncreateType=\"monolithicFlat\"\n{body}"), true),
        ("cid-first", format!("CID=0badcafe\nversion=1\ncreateType=\"monolithicFlat\"\n{body}"), false),
        ("createtype-first", format!("createType=\"monolithicFlat\"\nCID=0badcafe\nversion=1\n{body}"), false),
        ("bom", format!("\u{feff}# Disk DescriptorFile\nversion=1\nCID=0badcafe\ncreateType=\"monolithicFlat\"\n{body}"), false),
        ("bom-no-header", format!("\u{feff}version=1\nCID=0badcafe\ncreateType=\"monolithicFlat\"\n{body}"), false),
        ("crlf", format!("version=1\nCID=0badcafe\ncreateType=\"monolithicFlat\"\n{body}").replace('\n', "\r\n"), true),
        ("comments-first", format!("# rebuilt by hand\n   \n#\nversion=1\nCID=0badcafe\ncreateType=\"monolithicFlat\"\n{body}"), true),
    ];
    for (name, text, qemu_detects) in &cases {
        let file = format!("{name}.vmdk");
        std::fs::write(d.join(&file), text).unwrap();
        let qinfo = qemu_img(d, &["info", &file]);
        let qformat = if *qemu_detects {
            "file format: vmdk"
        } else {
            "file format: raw"
        };
        assert!(qinfo.contains(qformat), "{name}: qemu-img's probe: {qinfo}");
        let info = json_of(&vdisk_in(d, &["info", &file, "--json"]), name);
        assert_eq!(info["format"], "vmdk", "{name}");
        assert_eq!(info["subformat"], "monolithicFlat", "{name}");
        assert_eq!(info["virtual_size"], 1 << 20, "{name}");
        assert_eq!(info["cid"], "0badcafe", "{name}");
        assert_eq!(info["chain"][0]["adapter_type"], "lsilogic", "{name}");
        same_as_qemu(d, &file, Some("vmdk"), &file, &[]);
        assert_eq!(
            vdisk_map(d, &file, &[]),
            qemu_map(d, &file, Some("vmdk")),
            "{name}"
        );
    }
    // A blank line right before an extent line: qemu 10.0.2 reads that extent twice (its
    // sscanf skips the newline, then it steps over one line only), making the disk twice as
    // large; vdisk reads the line once, as VMware does.
    std::fs::write(
        d.join("blank-before-extent.vmdk"),
        "version=1\nCID=0badcafe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\nRW 2048 FLAT \"disk-flat.vmdk\" 0\n",
    )
    .unwrap();
    let q: Value = serde_json::from_str(&qemu_img(
        d,
        &["info", "--output=json", "blank-before-extent.vmdk"],
    ))
    .unwrap();
    assert_eq!(
        q["virtual-size"],
        2 << 20,
        "qemu-img reads the extent twice"
    );
    let info = json_of(
        &vdisk_in(d, &["info", "blank-before-extent.vmdk", "--json"]),
        "blank line",
    );
    assert_eq!(info["virtual_size"], 1 << 20);
    // Text that is not a descriptor stays a raw disk.
    std::fs::write(d.join("notes.txt"), "hello\nversion=1\n").unwrap();
    let info = json_of(&vdisk_in(d, &["info", "notes.txt", "--json"]), "notes");
    assert_eq!(info["format"], "raw");
}

/// Bytes of a name in a Windows code page, with its UTF-8 spelling.
struct CodePageName {
    encoding: &'static str,
    raw: &'static [u8],
    utf8: &'static str,
}

/// "Диск" in windows-1251, "Café" in windows-1252, "ディスク" in Shift_JIS (code tables:
/// WHATWG Encoding Standard indexes, as encoding_rs implements them).
const CODE_PAGE_NAMES: [CodePageName; 3] = [
    CodePageName {
        encoding: "windows-1251",
        raw: b"\xc4\xe8\xf1\xea",
        utf8: "Диск",
    },
    CodePageName {
        encoding: "windows-1252",
        raw: b"Caf\xe9",
        utf8: "Café",
    },
    CodePageName {
        encoding: "Shift_JIS",
        raw: b"\x83\x66\x83\x42\x83\x58\x83\x4e",
        utf8: "ディスク",
    },
];

fn name_bytes(parts: &[&[u8]]) -> OsString {
    OsString::from_vec(parts.concat())
}

/// Item 7: VMware on Windows writes `encoding="windows-1251"` (or another code page) and
/// extent names in it. A file copied off Windows has the UTF-8 name (the decoded one, tried
/// first); a file whose name kept the code page's bytes is found too (qemu-img reads those,
/// and is the reference there). Every JSON output stays valid JSON for any name.
#[test]
fn names_in_windows_code_pages_resolve_and_json_stays_valid() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let data = pattern(7, 1 << 20);
    for (i, cp) in CODE_PAGE_NAMES.iter().enumerate() {
        let mut desc = format!(
            "# Disk DescriptorFile\nversion=1\nencoding=\"{}\"\nCID=0000000{i}\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n# Extent description\nRW 2048 FLAT \"",
            cp.encoding
        )
        .into_bytes();
        desc.extend_from_slice(cp.raw);
        desc.extend_from_slice(b"-flat.vmdk\" 0\n\nddb.adapterType = \"lsilogic\"\n");

        // (a) The data file has the code page's bytes as its name; so has the descriptor.
        let raw_desc = name_bytes(&[cp.raw, b".vmdk"]);
        std::fs::write(d.join(&raw_desc), &desc).unwrap();
        std::fs::write(d.join(name_bytes(&[cp.raw, b"-flat.vmdk"])), &data).unwrap();
        let out = format!("{i}-bytes.raw");
        vdisk_os(
            d,
            &[
                OsStr::new("convert"),
                raw_desc.as_os_str(),
                OsStr::new(&out),
            ],
        )
        .expect_code(0, &format!("{}: convert (names as bytes)", cp.encoding));
        let q = format!("{i}-qemu.raw");
        let mut c = Command::new("qemu-img");
        c.current_dir(d)
            .args([OsStr::new("convert"), OsStr::new("-O"), OsStr::new("raw")])
            .arg(&raw_desc)
            .arg(&q);
        run(c).expect_code(0, "qemu-img reads names as bytes");
        assert_same_bytes(&d.join(&q), &d.join(&out));
        for cmd in [
            vec![
                OsStr::new("info"),
                raw_desc.as_os_str(),
                OsStr::new("--json"),
            ],
            vec![
                OsStr::new("map"),
                raw_desc.as_os_str(),
                OsStr::new("--json"),
            ],
            vec![
                OsStr::new("check"),
                raw_desc.as_os_str(),
                OsStr::new("--json"),
            ],
            vec![
                OsStr::new("diff"),
                OsStr::new(&out),
                raw_desc.as_os_str(),
                OsStr::new("--json"),
            ],
        ] {
            json_of(&vdisk_os(d, &cmd), &format!("{}: {cmd:?}", cp.encoding));
        }

        // (b) The files have the UTF-8 names a copy off Windows gives them; the descriptor
        // still holds the code page's bytes. qemu-img cannot open it (it looks for the bytes).
        let sub = d.join(format!("utf8-{i}"));
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join(format!("{}.vmdk", cp.utf8)), &desc).unwrap();
        std::fs::write(sub.join(format!("{}-flat.vmdk", cp.utf8)), &data).unwrap();
        let img = format!("{}.vmdk", cp.utf8);
        vdisk_in(&sub, &["convert", &img, "decoded.raw"])
            .expect_code(0, &format!("{}: convert (decoded names)", cp.encoding));
        assert_same_bytes(&d.join(&q), &sub.join("decoded.raw"));
        let info = json_of(&vdisk_in(&sub, &["info", &img, "--json"]), "info decoded");
        assert_eq!(
            info["chain"][0]["extents"][0]["file"],
            format!("{}-flat.vmdk", cp.utf8),
            "{}: the decoded name is the one read",
            cp.encoding
        );
    }

    // JSON with names that are not UTF-8 anywhere: the image, the repository, the output.
    let cp = &CODE_PAGE_NAMES[0];
    let img = name_bytes(&[cp.raw, b".vmdk"]);
    let repo = name_bytes(&[b"repo-", cp.raw]);
    let out = name_bytes(&[b"out-", cp.raw, b".raw"]);
    let os = |s: &'static str| OsStr::new(s);
    for cmd in [
        vec![os("backup"), &img, &repo, os("--json")],
        vec![os("backup"), &img, &repo, os("--json")],
        vec![os("list"), &repo, os("--json")],
        vec![os("verify"), &repo, os("--json")],
        vec![os("convert"), &img, &out, os("--json")],
        vec![os("hash"), &img, os("-o"), os("h.manifest")],
    ] {
        let r = vdisk_os(d, &cmd);
        if cmd.last() == Some(&os("--json")) {
            let v = json_of(&r, &format!("{cmd:?}"));
            if cmd[0] == os("convert") {
                assert!(v["source"].as_str().unwrap().ends_with(".vmdk"));
            }
        } else {
            r.expect_code(0, &format!("{cmd:?}"));
        }
    }
    let r = vdisk_os(d, &[os("diff"), os("h.manifest"), &img, os("--json")]);
    json_of(&r, "diff against a manifest");
}

/// The bytes a descriptor of VirtualBox's `createrawvmdk` reads, checked against the disk
/// it names: the device, or a regular file standing in for one.
struct Device {
    path: PathBuf,
    loop_dev: Option<String>,
}

impl Device {
    /// A loop device over `backing` when the machine allows one (root, a free loop device);
    /// the file itself otherwise, with the reason printed.
    fn over(backing: &Path) -> Device {
        let out = Command::new("losetup")
            .args(["-f", "--show", "-r"])
            .arg(backing)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
                Device {
                    path: PathBuf::from(&dev),
                    loop_dev: Some(dev),
                }
            }
            other => {
                println!(
                    "no loop device ({}): a regular file stands in for the device",
                    match other {
                        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                        Err(e) => e.to_string(),
                    }
                );
                Device {
                    path: backing.to_path_buf(),
                    loop_dev: None,
                }
            }
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(dev) = &self.loop_dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// Item 8: raw-device descriptors as VirtualBox's `createrawvmdk` (`VBoxManage createmedium
/// --variant RawDisk`) writes them: `fullDevice` is one FLAT extent of the whole device;
/// `partitionedDevice` copies the partition table sectors into `NAME-pt.vmdk`, maps each
/// chosen partition as FLAT on the device at its start sector, and the rest as ZERO
/// (VirtualBox's src/VBox/Storage/VMDK.cpp, vmdkCreateRawImage). qemu-img refuses both
/// ("Unsupported image type"), so the expected bytes are built from that layout. They are
/// read only with --allow-outside-paths, and refused with a one-line error otherwise.
#[test]
fn raw_device_descriptors_read_where_the_user_allows_the_device() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let disk = pattern(8, 8 << 20); // an 8 MiB "host disk"
    std::fs::write(d.join("host-disk.img"), &disk).unwrap();
    let dev = Device::over(&d.join("host-disk.img"));
    let devp = dev.path.display().to_string();

    let full = format!(
        "# Disk DescriptorFile\nversion=1\nCID=5e3a1c2b\nparentCID=ffffffff\ncreateType=\"fullDevice\"\n\n# Extent description\nRW 16384 FLAT \"{devp}\" 0\n\n# The disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType=\"ide\"\nddb.geometry.cylinders=\"16\"\nddb.geometry.heads=\"16\"\nddb.geometry.sectors=\"63\"\nddb.uuid.image=\"6ab4e3b2-1c6f-4c5e-9d0a-3f1e2d4c5b6a\"\n"
    );
    std::fs::write(d.join("full.vmdk"), full).unwrap();
    let e = one_line_error(&vdisk_in(d, &["info", "full.vmdk"]), 2, "refused device");
    assert!(
        e.contains(&devp) && e.contains("fullDevice") && e.contains("--allow-outside-paths"),
        "{e}"
    );
    let q = qemu_img_fails(d, &["info", "full.vmdk"]);
    assert!(q.contains("Unsupported image type 'fullDevice'"), "{q}");
    vdisk_in(
        d,
        &["--allow-outside-paths", "convert", "full.vmdk", "full.raw"],
    )
    .expect_code(0, "convert fullDevice");
    assert_eq!(std::fs::read(d.join("full.raw")).unwrap(), disk);
    let info = json_of(
        &vdisk_in(d, &["--allow-outside-paths", "info", "full.vmdk", "--json"]),
        "info fullDevice",
    );
    assert_eq!(info["subformat"], "fullDevice");
    assert_eq!(info["virtual_size"], 8 << 20);

    // partitionedDevice: sectors 0..63 (MBR and the gap) from the -pt file, a ZERO run up to
    // the first partition at sector 2048, partition 1 (sectors 2048..6144) on the device,
    // partition 2 left out as ZERO (6144..10240), partition 3 (10240..16384) on the device,
    // as VirtualBox writes it for `-partitions 1,3`.
    let pt = pattern(9, 63 * 512);
    std::fs::write(d.join("part-pt.vmdk"), &pt).unwrap();
    let part = format!(
        "# Disk DescriptorFile\nversion=1\nCID=5e3a1c2c\nparentCID=ffffffff\ncreateType=\"partitionedDevice\"\n\n# Extent description\nRW 63 FLAT \"part-pt.vmdk\" 0\nRW 1985 ZERO \nRW 4096 FLAT \"{devp}\" 2048\nRW 4096 ZERO \nRW 6144 FLAT \"{devp}\" 10240\n\n# The disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType=\"ide\"\n"
    );
    std::fs::write(d.join("part.vmdk"), part).unwrap();
    let e = one_line_error(&vdisk_in(d, &["map", "part.vmdk"]), 2, "refused partitions");
    assert!(e.contains("partitionedDevice"), "{e}");
    vdisk_in(
        d,
        &["--allow-outside-paths", "convert", "part.vmdk", "part.raw"],
    )
    .expect_code(0, "convert partitionedDevice");
    let mut want = vec![0u8; 8 << 20];
    want[..63 * 512].copy_from_slice(&pt);
    want[2048 * 512..6144 * 512].copy_from_slice(&disk[2048 * 512..6144 * 512]);
    want[10240 * 512..].copy_from_slice(&disk[10240 * 512..]);
    assert!(std::fs::read(d.join("part.raw")).unwrap() == want);
    let map = vdisk_map(d, "part.vmdk", &["--allow-outside-paths"]);
    assert_eq!(
        map,
        vec![
            (0, 63 * 512, true, false),
            (63 * 512, 1985 * 512, false, true),
            (2048 * 512, 4096 * 512, true, false),
            (6144 * 512, 4096 * 512, false, true),
            (10240 * 512, 6144 * 512, true, false),
        ]
    );
    // A device-backed source backs up and restores like any image.
    vdisk_in(
        d,
        &["-q", "--allow-outside-paths", "backup", "part.vmdk", "repo"],
    )
    .expect_code(0, "backup partitionedDevice");
    vdisk_in(d, &["-q", "restore", "repo", "restored.raw"]).expect_code(0, "restore");
    assert!(std::fs::read(d.join("restored.raw")).unwrap() == want);
}

/// Run qemu-img where it must fail, returning its stderr.
fn qemu_img_fails(dir: &Path, args: &[&str]) -> String {
    let mut c = Command::new("qemu-img");
    c.args(args).current_dir(dir);
    let r = run(c);
    assert_ne!(r.code, Some(0), "qemu-img {args:?} should fail");
    r.stderr
}

/// Item 9: a flat extent shorter than its descriptor reads as zero past its end, and maps so
/// (qemu-img map: `"zero": true` there), at the byte where the file ends.
#[test]
fn the_tail_of_a_short_flat_extent_maps_as_zero_like_qemu() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(d.join("short-flat.vmdk"), pattern(10, 600_000)).unwrap();
    std::fs::write(
        d.join("short.vmdk"),
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"short-flat.vmdk\" 0\n",
    )
    .unwrap();
    let ours = vdisk_map(d, "short.vmdk", &[]);
    assert_eq!(ours, qemu_map(d, "short.vmdk", None));
    assert_eq!(
        ours,
        vec![(0, 600_000, true, false), (600_000, 448_576, false, true)]
    );
    same_as_qemu(d, "short.vmdk", None, "short.vmdk", &[]);
    let info = json_of(&vdisk_in(d, &["info", "short.vmdk", "--json"]), "info");
    assert_eq!(info["allocated"], 600_000);
}

/// Item 9: an empty disk converts to a streamOptimized (and monolithicSparse) file that
/// qemu-img opens and checks clean. qemu-img's own empty streamOptimized file is one it
/// cannot open ("Unsupported image type 'streamOptimized'": a zero capacity with a
/// descriptor offset sends block/vmdk.c to its ESX descriptor-file path); vdisk reads it.
#[test]
fn an_empty_disk_converts_to_sparse_files_qemu_opens() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    std::fs::write(d.join("empty.raw"), b"").unwrap();
    for sub in ["streamOptimized", "monolithicSparse"] {
        let out = format!("empty-{sub}.vmdk");
        vdisk_in(
            d,
            &[
                "convert",
                "empty.raw",
                &out,
                "-O",
                "vmdk",
                "--subformat",
                sub,
            ],
        )
        .expect_code(0, sub);
        let q: Value =
            serde_json::from_str(&qemu_img(d, &["info", "--output=json", &out])).unwrap();
        assert_eq!(q["format"], "vmdk", "{sub}");
        assert_eq!(q["virtual-size"], 0, "{sub}");
        assert_eq!(q["format-specific"]["data"]["create-type"], sub, "{sub}");
        qemu_img(d, &["check", &out]);
        let info = json_of(&vdisk_in(d, &["info", &out, "--json"]), sub);
        assert_eq!(info["subformat"], sub);
        assert_eq!(info["virtual_size"], 0);
        vdisk_in(d, &["check", &out]).expect_code(0, sub);
        vdisk_in(d, &["convert", &out, &format!("{sub}.back.raw")]).expect_code(0, sub);
        assert_eq!(
            std::fs::metadata(d.join(format!("{sub}.back.raw")))
                .unwrap()
                .len(),
            0
        );
    }
    qemu_create_vmdk(d, "qemu-empty.vmdk", "0", &["subformat=streamOptimized"]);
    let q = qemu_img_fails(d, &["info", "qemu-empty.vmdk"]);
    assert!(
        q.contains("Unsupported image type 'streamOptimized'"),
        "{q}"
    );
    let info = json_of(
        &vdisk_in(d, &["info", "qemu-empty.vmdk", "--json"]),
        "qemu's empty",
    );
    assert_eq!(info["virtual_size"], 0);
    assert_eq!(info["subformat"], "streamOptimized");
}

/// Item 9: `check` reports a truncated or damaged image as findings (exit 1), and keeps
/// exit 2 for an image it cannot examine at all (missing, unreadable, not an image it knows).
#[test]
fn check_reports_damage_as_findings_and_exits_2_only_when_it_cannot_look() {
    require_qemu();
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    sample_raw(d, "disk.raw", "4M", 0x21);
    qemu_to_vmdk(d, "monolithicSparse", "disk.raw", "sparse.vmdk");
    qemu_to_vmdk(d, "streamOptimized", "disk.raw", "stream.vmdk");
    // Cut in the middle of the grains (the data is compressible: the files are small).
    let cut = |src: &str, dst: &str, keep: fn(usize) -> usize| {
        let b = std::fs::read(d.join(src)).unwrap();
        std::fs::write(d.join(dst), &b[..keep(b.len())]).unwrap();
    };
    cut("sparse.vmdk", "cut-sparse.vmdk", |n| n - 70_000);
    // qemu's stream: 64 KiB of header, descriptor and tables, then small compressed grains.
    cut("stream.vmdk", "cut-stream.vmdk", |_| 65_536 + 100);
    cut("sparse.vmdk", "cut-header.vmdk", |_| 100);
    let mut damaged = std::fs::read(d.join("sparse.vmdk")).unwrap();
    damaged[56..64].copy_from_slice(&u64::MAX.to_le_bytes()); // gdOffset past the file
    std::fs::write(d.join("bad-gd.vmdk"), damaged).unwrap();
    for img in [
        "cut-sparse.vmdk",
        "cut-stream.vmdk",
        "cut-header.vmdk",
        "bad-gd.vmdk",
    ] {
        let r = vdisk_in(d, &["check", img, "--json"]);
        r.expect_code(1, img);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["clean"], false, "{img}");
        assert!(!v["errors"].as_array().unwrap().is_empty(), "{img}");
        vdisk_in(d, &["check", img]).expect_code(1, img);
    }
    one_line_error(&vdisk_in(d, &["check", "missing.vmdk"]), 2, "missing");
}
