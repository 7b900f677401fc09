//! The fuzz targets' logic, one module per target, each with
//! `pub fn run(data: &[u8])` that panics when a property breaks.
//!
//! Shared by the libFuzzer entries in `fuzz/fuzz_targets/` (nightly flags via
//! `RUSTC_BOOTSTRAP=1`) and by `tests/fuzz_replay.rs`, which replays the
//! committed seeds and minimised corpora on stable in every test run.

pub mod adapter_load;
pub mod adapter_template;
pub mod common;
pub mod dingtalk_receive;
pub mod discord_receive;
pub mod dlp_mask;
pub mod dlp_stream;
pub mod feishu_decrypt;
pub mod feishu_receive;
pub mod generic_parse;
pub mod jwt_verify;
pub mod message_path;
pub mod policy_load;
pub mod slack_receive;
pub mod telegram_receive;
pub mod wecom_receive;
pub mod wecom_xml;
pub mod ws_frames;
pub mod wxcrypt_decrypt;

/// Every target: its name (the directory under `seeds/` and `corpora/`) and
/// its entry.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("adapter_load", adapter_load::run),
    ("adapter_template", adapter_template::run),
    ("dingtalk_receive", dingtalk_receive::run),
    ("discord_receive", discord_receive::run),
    ("dlp_mask", dlp_mask::run),
    ("dlp_stream", dlp_stream::run),
    ("feishu_decrypt", feishu_decrypt::run),
    ("feishu_receive", feishu_receive::run),
    ("generic_parse", generic_parse::run),
    ("jwt_verify", jwt_verify::run),
    ("message_path", message_path::run),
    ("policy_load", policy_load::run),
    ("slack_receive", slack_receive::run),
    ("telegram_receive", telegram_receive::run),
    ("wecom_receive", wecom_receive::run),
    ("wecom_xml", wecom_xml::run),
    ("ws_frames", ws_frames::run),
    ("wxcrypt_decrypt", wxcrypt_decrypt::run),
];
