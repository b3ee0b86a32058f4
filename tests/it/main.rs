//! Integration tests: the built `vdisk` binary against images made by qemu-img and qemu-io
//! (the independent reference), hostile inputs, and the fuzz corpora replayed.
//!
//! One test binary (`cargo test --test it`), a module per area.

mod admin;
mod attacks;
mod backup;
mod beyond;
mod cli;
mod common;
mod corpus;
mod diff;
mod esx;
mod formats;
mod hostile;
mod interop;
mod live;
mod nbd;
mod nbdserver;
mod readme;
mod realworld;
mod roundtrip;
mod s3;
mod s3server;
mod scale;
mod serve;
mod stream_spec;
mod trust;
mod write;
