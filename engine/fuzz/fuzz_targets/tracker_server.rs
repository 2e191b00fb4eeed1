//! libFuzzer entry point; the harness is [`corvid_fuzz::tracker_server`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corvid_fuzz::tracker_server(data));
