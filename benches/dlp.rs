//! DLP cost on the request path: the shipped `policies/dlp.yaml` plus 1,000
//! extra keywords, on a typical chat message and on a 64 KiB one, and the
//! compile (reload) cost of 50,000 keywords (the most a policy file under
//! the loader's 1 MiB bound holds at this word length).
//!
//! Targets (issue 4): <= 1 us for a 200-byte message, >= 500 MB/s on 64 KiB.
//! `chat_evasions` is a message written to evade (full-width digits and
//! letters, zero-width characters inside numbers): the folded-copy path.
//!
//! `dlp_stream` (issues 14 and 15): the 64 KiB transcript streamed through
//! a `StreamMasker` in 16-byte pieces (the size of a model's text deltas),
//! against `whole_64k`, the same text masked at once; the ratio of the two
//! is the cost of streaming-safe masking; the streamed time over the number
//! of pieces (about 4,100) is the added latency per chunk.
//!
//! `openai_sse` (issue 15): the same transcript as an OpenAI-compatible SSE
//! answer (`data: {chat.completion.chunk}` with a 16-byte `delta.content`
//! each, then `[DONE]`) through `ChunkMasker` (SSE parsing, one JSON parse
//! per chunk, streaming-safe masking, the chunk written again), against
//! `sse_parse_only` (the parsing and JSON alone, what any inspecting proxy
//! pays): per chunk, the difference is what masking adds.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moltgate::openai::chunks::ChunkMasker;
use moltgate::openai::sse::{data_event, SseParser};
use moltgate::policy::dlp::{Direction, DlpPolicy, StreamMasker};
use moltgate::policy::PolicySet;

const SHIPPED: &str = include_str!("../policies/dlp.yaml");

/// Deterministic pseudo-words: Latin syllables and CJK pairs, like project
/// code names and internal terms an operator would list.
fn keywords(n: usize) -> Vec<String> {
    const SYL: [&str; 16] = [
        "zor", "vex", "qua", "lin", "mar", "tok", "bri", "sel", "dun", "kha", "pio", "rux", "fen",
        "gal", "yom", "wet",
    ];
    const CJK: [&str; 16] = [
        "项目", "代号", "星辰", "海豚", "磐石", "北极", "凤凰", "雷霆", "青龙", "白虎", "玄武",
        "朱雀", "麒麟", "昆仑", "长城", "黄河",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 16) as usize
    };
    (0..n)
        .map(|i| {
            if i % 3 == 0 {
                format!("{}{}{}", CJK[next()], CJK[next()], CJK[next()])
            } else {
                format!(
                    "{}{}{}{}",
                    SYL[next()],
                    SYL[next()],
                    SYL[next()],
                    SYL[next()]
                )
            }
        })
        .collect()
}

fn policy_with_keywords(n: usize) -> String {
    let words: Vec<String> = keywords(n).iter().map(|w| format!("\"{w}\"")).collect();
    format!(
        "{SHIPPED}\n  extra:\n    words: [{}]\n    action: alert\n",
        words.join(", ")
    )
}

const CHAT: &str =
    "Hi team, can you summarise the Q3 report and send it to the design channel before Friday? \
会议改到下午三点，请大家准时参加。Thanks! Ping me on 2024-06-14 if the build on v1.8 still fails.";

const TRANSCRIPT: &str =
    "[2024-06-14 09:30:12] alice: 订单 2023112412345678 已发货，预计 3 天送达。\n\
[2024-06-14 09:31:40] bob: thanks, the invoice total was 1,284.50 CNY, ref #88213.\n\
[2024-06-14 09:32:05] assistant: Here is the summary of the meeting notes you asked for. \
The rollout of release 2.4.1 is planned for next week; 请在周五之前完成回归测试并更新文档。\n\
[2024-06-14 09:33:51] carol: reach me at carol.wu@example.com or on my desk phone ext. 4417.\n";

fn big_message() -> String {
    let mut s = String::with_capacity(64 * 1024 + TRANSCRIPT.len());
    while s.len() + TRANSCRIPT.len() <= 64 * 1024 {
        s.push_str(TRANSCRIPT);
    }
    s
}

fn scan(c: &mut Criterion) {
    let text = policy_with_keywords(1_000);
    let policy = match DlpPolicy::from_yaml(Path::new("policies/dlp.yaml"), &text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let mut g = c.benchmark_group("dlp_scan");
    let chat = &CHAT[..CHAT
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i <= 200)
        .last()
        .unwrap_or(0)];
    g.throughput(Throughput::Bytes(chat.len() as u64));
    g.bench_function("chat_200b", |b| {
        b.iter(|| policy.scan(black_box(chat), Direction::Ingress))
    });
    let with_phone = "帮我查一下 13812341234 这个号码的订单，谢谢。Also ping carol.wu@example.com about the contract renewal today";
    g.throughput(Throughput::Bytes(with_phone.len() as u64));
    g.bench_function("chat_with_findings", |b| {
        b.iter(|| policy.scan(black_box(with_phone), Direction::Ingress))
    });
    // The same kind of message written to evade: full-width digits and
    // letters, zero-width characters inside numbers (the folded-copy path).
    let evasive = "帮我查一下 １３８\u{200b}１２３４\u{200b}５６７８ 这个号码的订单，卡号4111\u{2060}1111 1111 1111。Also ping ｃａｒｏｌ．ｗｕ＠ｅｘａｍｐｌｅ．ｃｏｍ today";
    g.throughput(Throughput::Bytes(evasive.len() as u64));
    g.bench_function("chat_evasions", |b| {
        b.iter(|| policy.scan(black_box(evasive), Direction::Ingress))
    });
    let big = big_message();
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("transcript_64k", |b| {
        b.iter(|| policy.scan(black_box(&big), Direction::Egress))
    });
    let prose = "The quick brown fox jumps over the lazy dog while 我们讨论下一季度的路线图。"
        .repeat(64 * 1024 / 90);
    g.throughput(Throughput::Bytes(prose.len() as u64));
    g.bench_function("prose_64k", |b| {
        b.iter(|| policy.scan(black_box(&prose), Direction::Ingress))
    });
    g.finish();
}

fn compile(c: &mut Criterion) {
    let text = policy_with_keywords(50_000);
    // A refused file would time the error path: check it compiles first.
    if let Err(e) = DlpPolicy::from_yaml(Path::new("policies/dlp.yaml"), &text) {
        panic!("{e}");
    }
    let mut g = c.benchmark_group("dlp_compile");
    g.sample_size(10);
    g.bench_function("keywords_50k", |b| {
        b.iter(|| DlpPolicy::from_yaml(Path::new("policies/dlp.yaml"), black_box(&text)).is_ok())
    });
    g.finish();
}

/// `text` cut into pieces of about `size` bytes, on character boundaries.
fn pieces(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::with_capacity(text.len() / size + 1);
    let mut from = 0;
    while from < text.len() {
        let mut to = (from + size).min(text.len());
        while !text.is_char_boundary(to) {
            to += 1;
        }
        out.push(&text[from..to]);
        from = to;
    }
    out
}

fn stream(c: &mut Criterion) {
    let text = policy_with_keywords(1_000);
    let policy = match DlpPolicy::from_yaml(Path::new("policies/dlp.yaml"), &text) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    };
    let big = big_message();
    let deltas = pieces(&big, 16);
    let mut g = c.benchmark_group("dlp_stream");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("whole_64k", |b| {
        b.iter(|| policy.scan(black_box(&big), Direction::Egress))
    });
    g.bench_function("pieces_16b_64k", |b| {
        b.iter(|| {
            let mut m = StreamMasker::new(&policy, Direction::Egress);
            let mut out = 0;
            for d in &deltas {
                out += m.push(black_box(d)).text.len();
            }
            out + m.finish().text.len()
        })
    });
    g.finish();
}

fn openai_sse(c: &mut Criterion) {
    let policies = match PolicySet::load(Path::new("policies"), 1, None) {
        Ok(p) => std::sync::Arc::new(p),
        Err(e) => panic!("{e}"),
    };
    let big = big_message();
    let mut sse = Vec::new();
    let deltas = pieces(&big, 16);
    for d in &deltas {
        let chunk = serde_json::json!({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{"content":d},"finish_reason":null}]});
        sse.extend(data_event(&chunk.to_string()));
    }
    sse.extend_from_slice(b"data: [DONE]\n\n");
    let mut g = c.benchmark_group("openai_sse");
    g.throughput(Throughput::Elements(deltas.len() as u64));
    g.bench_function("sse_parse_only", |b| {
        b.iter(|| {
            let mut p = SseParser::default();
            let mut n = 0;
            for part in sse.chunks(4096) {
                for e in p.push(black_box(part)).unwrap_or_default() {
                    if let Some(d) = e.data {
                        n += serde_json::from_str::<serde_json::Value>(&d)
                            .map_or(0, |v| v.as_object().map_or(0, |o| o.len()));
                    }
                }
            }
            n
        })
    });
    g.bench_function("chunk_masker", |b| {
        b.iter(|| {
            let mut m = ChunkMasker::new(policies.clone());
            let mut out = 0;
            for part in sse.chunks(4096) {
                out += m.push(black_box(part)).len();
            }
            out + m.finish().len()
        })
    });
    g.finish();
}

criterion_group!(benches, scan, compile, stream, openai_sse);
criterion_main!(benches);
