//! The protocol spoken byte by byte: options, replies and commands as the spec defines them.

use vdisk_nbd::ExportConfig;

use crate::client::*;
use crate::common::*;

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

const SIZE: u64 = (3 << 20) + 1000;

#[test]
fn options_info_list_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let config = ExportConfig::new("disk").with_description("a test disk");
    let srv = Running::unix(tmp.path(), open_raw(&path), config);
    let mut c = Client::connect(&srv.socket);
    assert_eq!(c.greeting(), 3, "FIXED_NEWSTYLE | NO_ZEROES");
    c.client_flags(3);

    c.option(OPT_INFO, &Client::go_payload("disk", &[1, 2, 3]));
    let r = c.option_replies();
    assert_eq!(r.len(), 5, "{r:?}");
    assert_eq!(r[0].0, REP_INFO);
    assert_eq!(r[0].1.len(), 12);
    assert_eq!(be16(&r[0].1), 0);
    assert_eq!(be64(&r[0].1[2..]), SIZE);
    // HAS_FLAGS | READ_ONLY | CAN_MULTI_CONN, no SEND_DF without structured replies.
    assert_eq!(be16(&r[0].1[10..]), 0x103);
    assert_eq!(r[1], (REP_INFO, b"\0\x01disk".to_vec()));
    assert_eq!(r[2], (REP_INFO, b"\0\x02a test disk".to_vec()));
    assert_eq!(r[3].1.len(), 14);
    assert_eq!(be16(&r[3].1), 3);
    assert_eq!(be32(&r[3].1[2..]), 1);
    assert_eq!(be32(&r[3].1[6..]), 4096);
    assert_eq!(be32(&r[3].1[10..]), 32 << 20);
    assert_eq!(r[4], (REP_ACK, vec![]));

    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_replies(), vec![(REP_ACK, vec![])]);
    c.option(OPT_INFO, &Client::go_payload("", &[]));
    let r = c.option_replies();
    assert_eq!(
        be16(&r[0].1[10..]),
        0x183,
        "SEND_DF with structured replies"
    );

    c.option(OPT_INFO, &Client::go_payload("nope", &[]));
    let r = c.option_replies();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    assert!(String::from_utf8(r[0].1.clone()).unwrap().contains("nope"));

    // Name length past the payload; trailing bytes; data on LIST; unknown options.
    c.option(OPT_GO, &[0, 0, 1, 0, b'x', 0, 0]);
    assert_eq!(c.option_replies()[0].0, REP_ERR_INVALID);
    let mut p = Client::go_payload("disk", &[]);
    p.push(0);
    c.option(OPT_GO, &p);
    assert_eq!(c.option_replies()[0].0, REP_ERR_INVALID);
    c.option(OPT_LIST, b"x");
    assert_eq!(c.option_replies()[0].0, REP_ERR_INVALID);
    for opt in [4, 5, 11, 99, 0xffff_ffff] {
        c.option(opt, b"some data");
        let (o, kind, _) = c.option_reply();
        assert_eq!(o, opt);
        assert!(kind & 0x8000_0000 != 0, "option {opt}: {kind:#x}");
        if opt != 5 {
            assert_eq!(kind, REP_ERR_UNSUP, "option {opt}");
        }
    }

    c.option(OPT_LIST, &[]);
    let r = c.option_replies();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].0, REP_SERVER);
    assert_eq!(be32(&r[0].1), 4);
    assert_eq!(&r[0].1[4..8], b"disk");
    assert_eq!(&r[0].1[8..], b"a test disk");

    // Still usable: go, and read.
    c.option(OPT_GO, &Client::go_payload("disk", &[]));
    let r = c.option_replies();
    assert_eq!(r.last().unwrap().0, REP_ACK);
    assert_eq!(c.read(0, 4096).unwrap(), want[..4096]);
}

#[test]
fn meta_contexts_listed_and_selected() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let mut c = Client::connect(&srv.socket);
    c.greeting();
    c.client_flags(1);
    let ctx = |r: &[(u32, Vec<u8>)]| -> Vec<String> {
        r.iter()
            .filter(|x| x.0 == REP_META_CONTEXT)
            .map(|x| String::from_utf8(x.1[4..].to_vec()).unwrap())
            .collect()
    };
    for queries in [&[][..], &["base:"], &["base:allocation"]] {
        c.option(
            OPT_LIST_META_CONTEXT,
            &Client::meta_payload("disk", queries),
        );
        let r = c.option_replies();
        assert_eq!(ctx(&r), vec!["base:allocation"], "{queries:?}");
        assert_eq!(r.last().unwrap().0, REP_ACK);
    }
    c.option(
        OPT_LIST_META_CONTEXT,
        &Client::meta_payload("disk", &["qemu:dirty-bitmap:a"]),
    );
    assert_eq!(c.option_replies(), vec![(REP_ACK, vec![])]);
    // Setting needs structured replies first.
    c.option(
        OPT_SET_META_CONTEXT,
        &Client::meta_payload("disk", &["base:allocation"]),
    );
    assert_eq!(c.option_replies()[0].0, REP_ERR_INVALID);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    c.option_replies();
    c.option(
        OPT_SET_META_CONTEXT,
        &Client::meta_payload("other", &["base:allocation"]),
    );
    assert_eq!(c.option_replies()[0].0, REP_ERR_UNKNOWN);
    // A query count larger than the payload holds.
    let mut p = Client::meta_payload("disk", &["base:allocation"]);
    p[11] = 9;
    c.option(OPT_SET_META_CONTEXT, &p);
    assert_eq!(c.option_replies()[0].0, REP_ERR_INVALID);
    c.option(
        OPT_SET_META_CONTEXT,
        &Client::meta_payload("disk", &["x-foo:bar", "base:allocation", "base:"]),
    );
    let r = c.option_replies();
    assert_eq!(ctx(&r), vec!["base:allocation"]);
    let id = be32(&r[0].1);
    assert_ne!(id, 0, "a selected context has an id");
    c.option(OPT_GO, &Client::go_payload("disk", &[]));
    c.option_replies();
    c.request(CMD_BLOCK_STATUS, 0, 5, 0, 4096);
    let (cookie, r) = c.reply();
    assert_eq!(cookie, 5);
    assert_eq!(r.status, vec![(4096, 0)]);
    assert_eq!(r.context, Some(id));
}

#[test]
fn export_name_option_for_old_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    for (client_flags, reply_len) in [(1u32, 134usize), (3, 10)] {
        let mut c = Client::connect(&srv.socket);
        c.greeting();
        c.client_flags(client_flags);
        c.option(OPT_EXPORT_NAME, b"disk");
        let r = c.recv(reply_len);
        assert_eq!(be64(&r), SIZE);
        assert_eq!(be16(&r[8..]), 0x103);
        assert!(r[10..].iter().all(|&b| b == 0));
        c.request(CMD_READ, 0, 77, 512 << 10, 8192);
        assert_eq!(c.simple_reply(), (0, 77));
        assert_eq!(c.recv(8192), want[512 << 10..(512 << 10) + 8192]);
    }
    let mut c = Client::connect(&srv.socket);
    c.greeting();
    c.client_flags(3);
    c.option(OPT_EXPORT_NAME, b"wrong");
    assert!(
        c.closed(),
        "no error reply exists for EXPORT_NAME: disconnect"
    );
}

#[test]
fn client_flags_abort_and_magic_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let mut c = Client::connect(&srv.socket);
    c.greeting();
    c.client_flags(4);
    assert!(c.closed(), "unknown client flag");

    let mut c = Client::connect(&srv.socket);
    c.greeting();
    c.client_flags(3);
    c.option(OPT_ABORT, &[]);
    assert_eq!(c.option_reply().1, REP_ACK);
    assert!(c.closed());

    let mut c = Client::connect(&srv.socket);
    c.greeting();
    c.client_flags(3);
    c.send(b"IHAVEOPX\0\0\0\x07\0\0\0\0");
    assert!(c.closed(), "bad option magic");
}

#[test]
fn simple_replies_stream_data_and_report_errors_without_payload() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let (mut c, size, flags) = Client::handshake(&srv.socket, "disk", false, false);
    assert_eq!((size, flags), (SIZE, 0x103));
    // The whole disk: several 1 MiB windows, holes included, streamed as one reply.
    c.request(CMD_READ, 0, 1, 0, SIZE as u32);
    assert_eq!(c.simple_reply(), (0, 1));
    assert_eq!(c.recv(SIZE as usize), want);
    for (cookie, off, len, errno) in [
        (2, SIZE - 100, 200, EINVAL),
        (3, 0, 0, EINVAL),
        (4, u64::MAX - 10, 100, EINVAL),
        (5, 0, (32 << 20) + 1, EINVAL),
    ] {
        c.request(CMD_READ, 0, cookie, off, len);
        assert_eq!(c.simple_reply(), (errno, cookie));
    }
    // DF needs structured replies; block status needs a context.
    c.request(CMD_READ, CMD_FLAG_DF, 6, 0, 512);
    assert_eq!(c.simple_reply(), (EINVAL, 6));
    c.request(CMD_BLOCK_STATUS, 0, 7, 0, 512);
    assert_eq!(c.simple_reply(), (EINVAL, 7));
    c.request(CMD_READ, 0, 8, SIZE - 1000, 1000);
    assert_eq!(c.simple_reply(), (0, 8));
    assert_eq!(c.recv(1000), want[want.len() - 1000..]);
}

#[test]
fn structured_reads_send_holes_data_and_honour_df() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, want) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let (mut c, _, flags) = Client::handshake(&srv.socket, "disk", true, false);
    assert_eq!(flags, 0x183);

    c.request(CMD_READ, 0, 1, 0, SIZE as u32);
    let (_, r) = c.reply();
    assert!(r.error.is_none());
    assert_eq!(r.bytes(0, SIZE as usize), want);
    assert_eq!(r.holes, 1, "one hole chunk for [64K, 512K)");
    assert!(r.data_chunks >= 4, "data in chunks of at most 1 MiB");
    for (_, d) in &r.pieces {
        assert!(d.len() <= 1 << 20);
    }

    c.request(CMD_READ, 0, 2, 100 << 10, 200 << 10);
    let (_, r) = c.reply();
    assert_eq!((r.holes, r.data_chunks), (1, 0));
    assert_eq!(r.bytes(100 << 10, 200 << 10), vec![0; 200 << 10]);

    for len in [4096u32, SIZE as u32] {
        c.request(CMD_READ, CMD_FLAG_DF, 3, 0, len);
        let (_, r) = c.reply();
        assert_eq!((r.holes, r.data_chunks), (0, 1), "DF: one data chunk");
        assert_eq!(r.bytes(0, len as usize), want[..len as usize]);
    }

    for (off, len, errno) in [
        (SIZE - 100, 200, EINVAL),
        (0, 0, EINVAL),
        (0, (32 << 20) + 1, EINVAL),
    ] {
        let e = c.read(off, len).unwrap_err();
        // Past the end is EINVAL; a too-long read is EOVERFLOW when it fits the export.
        assert!(e.0 == errno || e.0 == EOVERFLOW, "{e:?}");
    }
    assert_eq!(c.read(SIZE - 1, 1).unwrap(), want[want.len() - 1..]);
}

#[test]
fn block_status_descriptors_and_req_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, true);
    let k = 1u32 << 10;
    c.request(CMD_BLOCK_STATUS, 0, 1, 0, SIZE as u32);
    let (_, r) = c.reply();
    assert_eq!(
        r.status,
        vec![(64 * k, 0), (448 * k, 3), (SIZE as u32 - 512 * k, 0)]
    );
    c.request(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 2, 0, SIZE as u32);
    assert_eq!(c.reply().1.status, vec![(64 * k, 0)]);
    c.request(
        CMD_BLOCK_STATUS,
        CMD_FLAG_REQ_ONE,
        3,
        100 * k as u64,
        100 * k,
    );
    assert_eq!(
        c.reply().1.status,
        vec![(100 * k, 3)],
        "clipped to the request"
    );
    c.request(CMD_BLOCK_STATUS, 0, 4, 1000 * k as u64, 1);
    assert_eq!(c.reply().1.status, vec![(1, 0)]);
    c.request(CMD_BLOCK_STATUS, 0, 5, SIZE - 1, 2);
    assert_eq!(c.reply().1.error.unwrap().0, EINVAL);
    c.request(CMD_BLOCK_STATUS, CMD_FLAG_DF, 6, 0, 1);
    assert_eq!(c.reply().1.error.unwrap().0, EINVAL, "DF is for reads");
}

#[test]
fn flush_cache_unknown_commands_and_disconnect() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = pattern_image(tmp.path());
    let srv = Running::unix(tmp.path(), open_raw(&path), ExportConfig::new("disk"));
    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", true, false);
    c.request(CMD_FLUSH, 0, 1, 0, 0);
    let (cookie, r) = c.reply();
    assert_eq!((cookie, r.error), (1, None));
    for (cookie, cmd) in [(2, 5u16), (3, 9), (4, 0xffff)] {
        c.request(cmd, 0, cookie, 0, 512);
        let (got, r) = c.reply();
        assert_eq!(got, cookie);
        assert_eq!(r.error, Some((EINVAL, None)));
    }
    c.request(CMD_DISC, 0, 5, 0, 0);
    assert!(c.closed());

    let (mut c, _, _) = Client::handshake(&srv.socket, "disk", false, false);
    c.request(CMD_FLUSH, 0, 6, 0, 0);
    assert_eq!(c.simple_reply(), (0, 6));
}
