//! libFuzzer entry point; the harness is [`corvid_fuzz::peer_auth`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corvid_fuzz::peer_auth(data));
