//! libFuzzer entry point; the harness is [`corvid_fuzz::wire`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corvid_fuzz::wire(data));
