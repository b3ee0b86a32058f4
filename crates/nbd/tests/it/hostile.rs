//! Hostile clients on raw sockets: garbage, stalls, absurd lengths, floods, refused writes,
//! failing images. The server answers with an error or disconnects, stays up, keeps memory
//! bounded, and keeps serving the other clients.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vdisk_nbd::{ExportConfig, Limits};

use crate::client::*;
use crate::common::*;

const SIZE: u64 = (3 << 20) + 1000;

/// xorshift: deterministic garbage.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Read until the server closes; panics if it does not within the client's timeout.
fn wait_closed(s: &mut UnixStream) {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("server did not close the connection: {e}"),
        }
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn garbage_is_dropped_and_other_clients_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let srv = Running::unix(dir, open_raw(&src), ExportConfig::new("disk"));
    for seed in 1..40u64 {
        let mut c = Client::connect(&srv.socket);
        let junk = garbage(seed, (seed as usize * 37) % 3000 + 1);
        match seed % 3 {
            // Garbage as client flags and options.
            0 => {}
            // Valid flags, garbage options.
            1 => c.send(&3u32.to_be_bytes()),
            // A full handshake, then garbage requests.
            _ => {
                let (c2, _, _) = Client::handshake(&srv.socket, "disk", seed % 2 == 0, false);
                c = c2;
            }
        }
        let _ = c.s.write_all(&junk);
        let _ = c.s.shutdown(std::net::Shutdown::Write);
        wait_closed(&mut c.s);
    }
    qemu_io(dir, &["-r", "-f", "raw", &srv.uri], &["read -P 0xab 0 1M"]);
}

#[test]
fn stalled_handshakes_time_out_without_blocking_others() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = raw_image(dir);
    let limits = Limits {
        handshake_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let srv = Running::unix_with(dir, open_raw(&src), ExportConfig::new("disk"), limits);
    let start = Instant::now();
    // One says nothing at all; one dribbles a byte at a time.
    let mut silent = Client::connect(&srv.socket);
    silent.greeting();
    let mut dribbler = Client::connect(&srv.socket);
    dribbler.greeting();
    let dribble = std::thread::spawn(move || {
        let bytes = b"\0\0\0\x03IHAVEOPT\0\0\0\x07\0\0\0\x06\0\0\0\0\0\0";
        for b in bytes {
            if dribbler.s.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        dribbler
    });
    // Meanwhile, another client is served at once.
    qemu_io(
        dir,
        &["-r", "-f", "raw", &srv.uri],
        &["read -P 0xcd 3M 512k"],
    );
    assert!(
        start.elapsed() < Duration::from_millis(1900),
        "served during the stall"
    );
    wait_closed(&mut silent.s);
    let t = start.elapsed();
    assert!(
        t >= Duration::from_millis(1900) && t < Duration::from_secs(5),
        "{t:?}"
    );
    let mut dribbler = dribble.join().unwrap();
    wait_closed(&mut dribbler.s);
    assert!(start.elapsed() < Duration::from_secs(6));
}

#[test]
fn absurd_option_lengths_are_refused_without_reading_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    // The refusal comes before any of the 4 GiB is sent: the server did not try to read
    // (or allocate) it.
    let mut c = Client::connect(&srv.socket);
    c.greeting();
    c.client_flags(3);
    c.send(b"IHAVEOPT\0\0\0\x07\xff\xff\xff\xff");
    let (opt, kind, msg) = c.option_reply();
    assert_eq!((opt, kind), (OPT_GO, REP_ERR_TOO_BIG));
    assert!(!msg.is_empty());
    drop(c);

    // A long (but finite) option is skipped, and the handshake goes on.
    let mut c = Client::connect(&srv.socket);
    c.greeting();
    c.client_flags(3);
    c.option(OPT_SET_META_CONTEXT, &vec![b'x'; 200 << 10]);
    assert_eq!(c.option_reply().1, REP_ERR_TOO_BIG);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_replies()[0].0, REP_ACK);
    c.option(OPT_GO, &Client::go_payload("disk", &[]));
    c.option_replies();
    assert_eq!(c.read(0, 100).unwrap(), want[..100]);

    // EXPORT_NAME cannot be answered with an error: disconnect.
    let mut c = Client::connect(&srv.socket);
    c.greeting();
    c.client_flags(3);
    c.send(b"IHAVEOPT\0\0\0\x01\x10\0\0\0");
    assert!(c.closed());
}

#[test]
fn requests_past_the_end_or_absurdly_long_get_errors_and_the_connection_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, true);
    let cases = [
        (CMD_READ, u64::MAX, u32::MAX),
        (CMD_READ, 0, u32::MAX),
        (CMD_READ, SIZE, 1),
        (CMD_READ, 1 << 62, 4096),
        (CMD_BLOCK_STATUS, SIZE, 1),
        (CMD_BLOCK_STATUS, 0, u32::MAX),
        (CMD_BLOCK_STATUS, u64::MAX, 1),
    ];
    for (i, (cmd, off, len)) in cases.into_iter().enumerate() {
        c.request(cmd, 0, i as u64, off, len);
        let (cookie, r) = c.reply();
        assert_eq!(cookie, i as u64);
        let e = r.error.unwrap().0;
        assert!(e == EINVAL || e == EOVERFLOW, "case {i}: {e}");
    }
    assert_eq!(c.read(SIZE - 10, 10).unwrap(), want[want.len() - 10..]);
}

/// Run `name`, an ignored test of this binary, alone in a child process, so that its
/// memory measurements see no other test's allocations.
fn in_child(name: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{name} did not run:\n{stdout}");
}

#[test]
fn a_flood_of_pipelined_requests_is_answered_with_bounded_memory() {
    in_child("hostile::flood_in_a_child_process");
}

#[test]
#[ignore = "run alone in a child process by a_flood_of_pipelined_requests_is_answered_with_bounded_memory"]
fn flood_in_a_child_process() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let limits = Limits {
        max_in_flight: 8,
        workers: 2,
        ..Limits::default()
    };
    let srv = Running::unix_with(
        tmp.path(),
        open_raw(&path),
        ExportConfig::new("disk"),
        limits,
    );
    let rss = rss_kib();
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    const N: u64 = 20_000;
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..N {
            // Reads of 64 KiB, some past the end.
            let off = if i % 10 == 9 {
                SIZE
            } else {
                (i * 4096) % (SIZE - 65536)
            };
            batch.extend(Client::request_bytes(CMD_READ, 0, i, off, 65536));
            if batch.len() > 64 << 10 {
                w.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        w.write_all(&batch).unwrap();
    });
    let mut seen = vec![false; N as usize];
    c.replies_each(N as usize, |cookie, r| {
        assert!(!std::mem::replace(&mut seen[cookie as usize], true));
        if cookie % 10 == 9 {
            assert_eq!(r.error.unwrap().0, EINVAL);
        } else {
            let off = (cookie * 4096) % (SIZE - 65536);
            assert_eq!(
                r.bytes(off, 65536),
                want[off as usize..off as usize + 65536]
            );
        }
    });
    writer.join().unwrap();
    let stats = srv.server.stats();
    assert!(stats.peak_in_flight <= 8, "{stats:?}");
    let grown = rss_kib().saturating_sub(rss);
    assert!(grown < 32 << 10, "memory grew by {grown} KiB");

    // A client that floods and never reads a reply: the server stops reading it.
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    c.s.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let req: Vec<u8> = (0..1000u64)
        .flat_map(|i| Client::request_bytes(CMD_READ, 0, i, 0, 1 << 20))
        .collect();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if c.s.write(&req).is_err() {
            break;
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the server kept reading"
    );
    assert!(srv.server.stats().peak_in_flight <= 8);
    let grown = rss_kib().saturating_sub(rss);
    assert!(grown < 32 << 10, "memory grew by {grown} KiB");
    // And it still serves others.
    let (mut c2, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    assert_eq!(c2.read(0, 4096).unwrap(), want[..4096]);
    drop(c);
}

#[test]
fn writes_are_refused_with_eperm_and_their_payload_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    for structured in [true, false] {
        let (mut c, _, _) = Client::handshake(&srv.socket, "disk", structured, false);
        let mut m = Client::request_bytes(CMD_WRITE, 0, 1, 0, 4096);
        m.extend(garbage(7, 4096));
        // The payload looks like requests: it must be skipped, not parsed.
        m.extend(Client::request_bytes(CMD_READ, 0, 2, 0, 16));
        c.send(&m);
        let err = |c: &mut Client, cookie: u64| {
            if structured {
                let (got, r) = c.reply();
                assert_eq!(got, cookie);
                r.error.unwrap().0
            } else {
                let (e, got) = c.simple_reply();
                assert_eq!(got, cookie);
                e
            }
        };
        assert_eq!(err(&mut c, 1), EPERM);
        if structured {
            let (got, r) = c.reply();
            assert_eq!(got, 2);
            assert_eq!(r.bytes(0, 16), want[..16]);
        } else {
            assert_eq!(c.simple_reply(), (0, 2));
            assert_eq!(c.recv(16), want[..16]);
        }
        c.request(CMD_WRITE_ZEROES, 0, 3, 0, 4096);
        assert_eq!(err(&mut c, 3), EPERM);
        c.request(CMD_TRIM, 0, 4, 0, 4096);
        assert_eq!(err(&mut c, 4), EPERM);
        // A write payload above the maximum is an attack: disconnect.
        c.request(CMD_WRITE, 0, 5, 0, 64 << 20);
        assert!(c.closed());
    }
    assert_eq!(file_bytes(&path), want);
}

#[test]
fn pipelined_reads_are_answered_by_cookie() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    let rnd = garbage(99, 64 * 8);
    let mut reqs = Vec::new();
    let mut m = Vec::new();
    for i in 0..64u64 {
        let r = u64::from_le_bytes(rnd[i as usize * 8..i as usize * 8 + 8].try_into().unwrap());
        // Big reads first, so that small later ones can overtake them.
        let len = if i < 8 {
            2 << 20
        } else {
            1 + (r >> 32) % 70000
        };
        let off = r % (SIZE - len);
        let cookie = 0x1000_0000_0000 + i * 7919;
        reqs.push((cookie, off, len));
        m.extend(Client::request_bytes(CMD_READ, 0, cookie, off, len as u32));
    }
    c.send(&m);
    // Chunks of different replies may interleave; `replies` keeps them apart by cookie.
    let replies = c.replies(64);
    for (cookie, off, len) in reqs {
        let r = &replies[&cookie];
        assert!(r.error.is_none());
        assert_eq!(
            r.bytes(off, len as usize),
            want[off as usize..(off + len) as usize],
            "cookie {cookie:#x}"
        );
    }
    // The same over simple replies, where each reply is whole and data follows its header.
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", false, false);
    let mut m = Vec::new();
    for i in 0..32u64 {
        m.extend(Client::request_bytes(
            CMD_READ,
            0,
            100 + i,
            i * 4096,
            4096 + i as u32,
        ));
    }
    c.send(&m);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..32 {
        let (e, cookie) = c.simple_reply();
        assert_eq!(e, 0);
        let i = cookie - 100;
        assert!(seen.insert(i));
        let data = c.recv(4096 + i as usize);
        assert_eq!(
            data,
            want[(i * 4096) as usize..(i * 4096 + 4096 + i) as usize]
        );
    }
}

#[test]
fn image_read_errors_are_eio_and_the_connection_stays_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let bad = (2 << 20) + 4096;
    let img = Arc::new(FailingImage {
        inner: open_raw(&path),
        bad_start: bad,
        bad_end: bad + 4096,
    });
    let srv = Running::unix(tmp.path(), img, ExportConfig::new("disk"));

    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    // Fragmented: the windows before the bad one arrive, then an error at an offset
    // inside the request.
    let (errno, at) = c.read(1 << 20, 2 << 20).unwrap_err();
    assert_eq!(errno, EIO);
    let at = at.expect("an error offset");
    assert!(((1 << 20)..(3 << 20)).contains(&at) && at <= bad, "{at}");
    assert_eq!(c.read(0, 4096).unwrap(), want[..4096]);
    // DF: one data chunk padded to its promised length, then the error.
    c.request(CMD_READ, CMD_FLAG_DF, 9, 0, 3 << 20);
    let (_, r) = c.reply();
    assert_eq!(r.error.unwrap().0, EIO);
    assert_eq!(r.data_chunks, 1);
    c.request(CMD_READ, CMD_FLAG_DF, 10, bad, 100);
    let (_, r) = c.reply();
    assert_eq!((r.error.unwrap().0, r.data_chunks), (EIO, 0));
    assert_eq!(c.read(0, 4096).unwrap(), want[..4096]);

    // Simple replies: an error in the first window is a clean EIO without data...
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", false, false);
    c.request(CMD_READ, 0, 1, bad - 100, 4096);
    assert_eq!(c.simple_reply(), (EIO, 1));
    c.request(CMD_READ, 0, 2, 0, 4096);
    assert_eq!(c.simple_reply(), (0, 2));
    assert_eq!(c.recv(4096), want[..4096]);
    // ...one after the header went out can only end the connection (as the spec says).
    c.request(CMD_READ, 0, 3, 0, 3 << 20);
    assert_eq!(c.simple_reply(), (0, 3));
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    assert!(rest.len() < 3 << 20);
}

#[test]
fn bad_request_magic_disconnects() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    let mut m = Client::request_bytes(CMD_READ, 0, 1, 0, 512);
    m[0] ^= 0xff;
    c.send(&m);
    assert!(c.closed());
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let srv = Running::unix_with(
        tmp.path(),
        open_raw(&path),
        ExportConfig::new("disk"),
        limits,
    );
    let (a, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    let (mut b, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    let mut third = Client::connect(&srv.socket);
    assert!(third.closed(), "over the cap: closed without a greeting");
    assert!(srv.server.stats().refused >= 1);
    assert_eq!(b.read(0, 10).unwrap(), want[..10]);
    drop(a);
    let t = Instant::now();
    while srv.server.stats().active > 1 {
        assert!(t.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    assert_eq!(c.read(0, 10).unwrap(), want[..10]);
}

/// Walk the whole disk with block status requests as large as the protocol allows;
/// returns the extents (start, length, flags), joined.
fn walk_status(c: &mut Client, size: u64, flags: u16) -> Vec<(u64, u64, u32)> {
    let mut out: Vec<(u64, u64, u32)> = Vec::new();
    let mut pos = 0;
    let mut cookie = 0;
    while pos < size {
        let len = (size - pos).min(0xffff_f000) as u32;
        cookie += 1;
        c.request(CMD_BLOCK_STATUS, flags, cookie, pos, len);
        let (_, r) = c.reply();
        assert!(r.error.is_none(), "{:?}", r.error);
        assert!(!r.status.is_empty());
        for (l, f) in r.status {
            let l = u64::from(l).min(size - pos);
            match out.last_mut() {
                Some(last) if last.2 == f => last.1 += l,
                _ => out.push((pos, l, f)),
            }
            pos += l;
        }
    }
    out
}

#[test]
fn block_status_of_a_1_tib_mostly_empty_raw_disk_is_fast() {
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.raw");
    let tib = 1u64 << 40;
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(tib).unwrap();
    for off in [0, 300 << 30, tib - (64 << 10)] {
        f.write_all_at(&[0xee; 64 << 10], off).unwrap();
    }
    drop(f);
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("big"));
    let (mut c, size, _) = Client::handshake(&srv.socket, "big", true, true);
    assert_eq!(size, tib);
    let k64 = 64 << 10;
    let want = vec![
        (0, k64, 0),
        (k64, (300 << 30) - k64, 3),
        (300 << 30, k64, 0),
        ((300 << 30) + k64, tib - (300 << 30) - 2 * k64, 3),
        (tib - k64, k64, 0),
    ];
    for flags in [0, CMD_FLAG_REQ_ONE] {
        let t = Instant::now();
        let map = walk_status(&mut c, size, flags);
        let took = t.elapsed();
        assert_eq!(map, want);
        assert!(took < Duration::from_millis(800), "{flags}: {took:?}");
    }
}

#[test]
fn block_status_of_a_1_tib_mostly_empty_vmdk_is_fast() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    qemu_img(dir, &["create", "-q", "-f", "vmdk", "big.vmdk", "1T"]);
    qemu_io(
        dir,
        &["-f", "vmdk", "big.vmdk"],
        &["write -P 1 0 64k", "write -P 2 512G 64k"],
    );
    let img = Arc::new(vdisk_image::open(dir.join("big.vmdk")).unwrap());
    let srv = Running::unix(dir, img, ExportConfig::new("big"));
    let (mut c, size, _) = Client::handshake(&srv.socket, "big", true, true);
    let t = Instant::now();
    let map = walk_status(&mut c, size, 0);
    let took = t.elapsed();
    let k64 = 64 << 10;
    assert_eq!(
        map,
        vec![
            (0, k64, 0),
            (k64, (512 << 30) - k64, 3),
            (512 << 30, k64, 0),
            ((512 << 30) + k64, (512 << 30) - k64, 3),
        ]
    );
    // The walk costs what vdisk-vmdk's allocation map costs: qemu allocates every grain
    // table of the image (as file holes), so all 16 Mi grain entries are looked at (about
    // 0.4 s optimised). The bound catches anything worse than linear in the grain count.
    assert!(took < Duration::from_secs(3), "{took:?}");
}

/// A 4 GiB image whose map alternates data and unallocated every 512 bytes: the worst
/// map a format can describe.
struct ShreddedImage;

impl vdisk_core::DiskImage for ShreddedImage {
    fn size(&self) -> u64 {
        4 << 30
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vdisk_core::Result<()> {
        vdisk_core::check_range(self.size(), offset, buf.len() as u64)?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = if ((offset + i as u64) / 512).is_multiple_of(2) {
                0x5a
            } else {
                0
            };
        }
        Ok(())
    }
    fn allocation(&self, offset: u64, length: u64) -> vdisk_core::Result<Vec<vdisk_core::Extent>> {
        vdisk_core::check_range(self.size(), offset, length)?;
        let mut map = Vec::new();
        let mut pos = offset;
        while pos < offset + length {
            let end = ((pos / 512 + 1) * 512).min(offset + length);
            let allocation = if (pos / 512).is_multiple_of(2) {
                vdisk_core::Allocation::Data
            } else {
                vdisk_core::Allocation::Unallocated
            };
            map.push(vdisk_core::Extent {
                start: pos,
                length: end - pos,
                allocation,
                depth: 0,
            });
            pos = end;
        }
        Ok(map)
    }
    fn format_name(&self) -> &'static str {
        "shredded"
    }
}

#[test]
fn block_status_of_a_shredded_map_is_capped_and_quick() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Running::unix(tmp.path(), Arc::new(ShreddedImage), ExportConfig::new("s"));
    let (mut c, _, _) = Client::handshake(&srv.socket, "s", true, true);
    let t = Instant::now();
    c.request(CMD_BLOCK_STATUS, 0, 1, 0, 0xffff_f000);
    let (_, r) = c.reply();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(!r.status.is_empty() && r.status.len() <= vdisk_nbd::MAX_DESCRIPTORS);
    for (i, (len, flags)) in r.status.iter().enumerate() {
        assert_eq!((*len, *flags), (512, if i % 2 == 0 { 0 } else { 3 }));
    }
    c.request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 2, 1000, 0xffff_f000);
    assert_eq!(c.reply().1.status, vec![(24, 3)]);
    // A read over it: alternating data and hole chunks that reassemble exactly.
    c.request(CMD_READ, 0, 3, 100, 1 << 20);
    let (_, r) = c.reply();
    let want: Vec<u8> = (100..100 + (1u64 << 20))
        .map(|o| if o / 512 % 2 == 0 { 0x5a } else { 0 })
        .collect();
    assert_eq!(r.bytes(100, 1 << 20), want);
    assert!(r.holes >= 1000 && r.data_chunks >= 1000);
}

/// An image whose allocation map is nonsense: gaps, overlaps, extents outside the range
/// asked for. The server must still answer with replies that cover the request exactly.
struct LyingImage;

impl vdisk_core::DiskImage for LyingImage {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> vdisk_core::Result<()> {
        vdisk_core::check_range(self.size(), offset, buf.len() as u64)?;
        buf.fill(0x11);
        Ok(())
    }
    fn allocation(&self, offset: u64, length: u64) -> vdisk_core::Result<Vec<vdisk_core::Extent>> {
        use vdisk_core::{Allocation::*, Extent};
        let e = |start: u64, length: u64, allocation| Extent {
            start,
            length,
            allocation,
            depth: 0,
        };
        Ok(vec![
            e(offset + 100, 50, Zero),
            e(offset + 120, 1000, Unallocated),
            e(offset + 90, 5, Data),
            e(offset + length + 10, 5, Zero),
            e(offset + 5000, 0, Zero),
            e(u64::MAX - 5, 100, Unallocated),
            e(0, u64::MAX, Data),
        ])
    }
    fn format_name(&self) -> &'static str {
        "lying"
    }
}

#[test]
fn a_nonsense_allocation_map_still_gives_valid_replies() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = Running::unix(tmp.path(), Arc::new(LyingImage), ExportConfig::new("l"));
    let (mut c, _, _) = Client::handshake(&srv.socket, "l", true, true);
    for (off, len) in [(0u64, 1u32 << 20), (7, 3000), ((1 << 20) - 1, 1)] {
        c.request(CMD_BLOCK_STATUS, 0, 1, off, len);
        let (_, r) = c.reply();
        assert!(r.error.is_none());
        let total: u64 = r.status.iter().map(|d| u64::from(d.0)).sum();
        assert_eq!(total, u64::from(len), "{:?}", r.status);
        assert!(r.status.iter().all(|d| d.0 > 0));
        c.request(CMD_READ, 0, 2, off, len);
        let (_, r) = c.reply();
        assert!(r.error.is_none());
        // `bytes` checks the chunks cover the request without overlap.
        r.bytes(off, len as usize);
    }
}

#[test]
fn a_client_that_never_ends_its_handshake_is_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let mut c = Client::connect(&srv.socket);
    c.greeting();
    c.client_flags(3);
    let n = vdisk_nbd::MAX_OPTIONS + 50;
    let mut w = c.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let one = b"IHAVEOPT\0\0\0\x03\0\0\0\0";
        for _ in 0..n {
            if w.write_all(one).is_err() {
                break;
            }
        }
    });
    let mut acks = 0;
    let mut b = [0u8; 20];
    // Each LIST is answered with a server entry and an ack; then the connection ends.
    while c.s.read_exact(&mut b).is_ok() {
        let len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        if c.s.read_exact(&mut data).is_err() {
            break;
        }
        if u32::from_be_bytes(b[12..16].try_into().unwrap()) == REP_ACK {
            acks += 1;
        }
    }
    writer.join().unwrap();
    assert_eq!(acks, vdisk_nbd::MAX_OPTIONS);
}
