#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vdisk_qcow2::fuzzing::open_and_read(data));
