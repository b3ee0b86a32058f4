//! Integration tests of the NBD server with real clients: qemu-img, qemu-io, nbdinfo, and
//! raw sockets speaking (and breaking) the protocol.

mod client;
mod common;
mod corpus;
mod hostile;
mod liar;
mod lifecycle;
mod limits;
mod nbdinfo;
mod protocol;
mod qemu;
mod reader;
mod servers;
