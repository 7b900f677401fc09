//! libFuzzer entry for [`harness::adapter_template`]; the logic lives in
//! `fuzz/harness/` so that `tests/fuzz_replay.rs` replays the corpora on stable.
#![no_main]

#[allow(dead_code)]
#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::adapter_template::run(data));
