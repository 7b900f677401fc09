//! The labelled corpus: positives of every shipped type, written plainly and
//! with each evasion, in English and Chinese sentences, and decoys.

use super::gen::{self, Rng, Sample};

/// Every rule of the shipped `policies/dlp.yaml`.
pub const TYPES: &[&str] = &[
    "id_card",
    "credit_card",
    "cn_mobile",
    "email",
    "aws_access_key",
    "private_key",
    "github_token",
    "slack_token",
    "openai_key",
    "stripe_secret_key",
    "google_api_key",
    "internal",
];

/// Sentences around a value: (before, after), English then Chinese.
fn templates(rule: &str) -> &'static [(&'static str, &'static str)] {
    match rule {
        "credit_card" => &[
            ("Please charge my card ", " for the annual plan."),
            ("Card number: ", ", expiry 09/27."),
            ("I paid with ", " yesterday, can you check the refund?"),
            ("my visa is ", " and the billing zip is 94107"),
            ("我的银行卡号是", "，请帮我查一下余额。"),
            ("卡号：", "，有效期到2027年。"),
            ("请把退款打到", "这张卡上，谢谢"),
            ("信用卡 ", " 已经绑定了"),
        ],
        "id_card" => &[
            ("My ID number is ", ", issued in Beijing."),
            ("resident id: ", "."),
            ("身份证号码：", "。"),
            ("我的身份证是", "，请核对"),
            ("请登记身份证 ", " 后再办理"),
        ],
        "cn_mobile" => &[
            ("Call me on ", " after 6pm."),
            ("My phone is ", ", text first please."),
            ("contact: ", " (WeChat same number)"),
            ("手机", "，下午联系。"),
            ("我的电话号码是", "，随时打给我"),
            ("联系人：王先生 ", " 周末也可以"),
        ],
        "email" => &[
            ("You can reach me at ", " anytime."),
            ("Send the invoice to ", ", thanks!"),
            ("cc: ", "; bcc nobody"),
            ("邮箱", "，谢谢！"),
            ("请把报告发到 ", " 这个邮箱"),
            ("我的邮件地址是：", "。"),
        ],
        "aws_access_key" => &[
            ("export AWS_ACCESS_KEY_ID=", "\nexport REGION=us-east-1"),
            ("The access key is ", ", rotate it after the demo."),
            ("密钥 ", " 请勿外传"),
            ("AWS 访问密钥：", "，用完请删除。"),
        ],
        "private_key" => &[
            ("here is the server key:\n", "\nplease rotate it"),
            ("Key file contents: ", " (do not commit)"),
            ("服务器私钥如下：\n", "\n用完请删除"),
        ],
        "github_token" => &[
            ("GITHUB_TOKEN=", " in the CI settings"),
            ("use token ", " for the push"),
            ("令牌 ", " 已过期吗？"),
            ("GitHub 令牌：", "。"),
        ],
        "slack_token" => &[
            ("bot token: ", " (workspace acme)"),
            ("SLACK_BOT_TOKEN=", "\nSLACK_CHANNEL=general"),
            ("Slack 机器人令牌 ", " 请更新"),
        ],
        "openai_key" => &[
            ("OPENAI_API_KEY=", "\nMODEL=gpt-4o"),
            ("my api key is ", ", it has a budget cap"),
            ("接口密钥：", "，额度很低"),
        ],
        "stripe_secret_key" => &[
            ("STRIPE_KEY=", " in prod"),
            ("the live key ", " must not be shared"),
            ("Stripe 正式密钥 ", " 已泄露"),
        ],
        "google_api_key" => &[
            ("maps key ", " restricted to our domain"),
            ("GOOGLE_API_KEY=", "\nPROJECT=demo"),
            ("谷歌地图密钥：", "，限额每日一千次"),
        ],
        _ => &[
            ("This deck is ", ", please keep it to the team."),
            ("Marked ", " by legal."),
            ("这份文件是", "，请勿外传。"),
            ("注意：", "，阅后即焚"),
        ],
    }
}

/// Glue before a number: letters right against its first digit.
const GLUE: &[&str] = &[
    "tel",
    "call me at",
    "card",
    "ID",
    "No",
    "mobile",
    "visa",
    "acct",
    "ref",
];

fn evasions(rule: &str) -> &'static [&'static str] {
    match rule {
        "credit_card" => &[
            "plain",
            "separators",
            "full-width",
            "zero-width",
            "glued",
            "retry",
            "mixed",
        ],
        "cn_mobile" => &[
            "plain",
            "separators",
            "full-width",
            "zero-width",
            "glued",
            "mixed",
        ],
        "id_card" => &["plain", "full-width", "zero-width", "glued", "mixed"],
        "email" => &[
            "plain",
            "full-width",
            "partial-width",
            "zero-width",
            "mixed",
        ],
        _ => &["plain", "full-width", "zero-width", "mixed"],
    }
}

/// Applies a character-level evasion (full-width, zero-width or both) to `s`.
fn dress(rng: &mut Rng, s: &str, evasion: &str) -> String {
    match evasion {
        "full-width" => gen::full_width(rng, s, 100),
        "partial-width" => gen::full_width(rng, s, 50),
        "zero-width" => {
            let n = rng.range(1, 3);
            gen::zero_width(rng, s, n)
        }
        "mixed" => {
            let w = gen::full_width(rng, s, 60);
            let n = rng.range(1, 2);
            gen::zero_width(rng, &w, n)
        }
        _ => s.to_string(),
    }
}

fn grouped(digits: &str, sep: &str) -> String {
    gen::card_groups(digits).join(sep)
}

/// A card written with `evasion`; `before`/`after` may be extended (glue, a
/// neighbouring digit group). None when the written form is ambiguous: its
/// digit groups also hold another valid card.
fn card_text(rng: &mut Rng, evasion: &str) -> Option<(String, String, String)> {
    let (digits, _) = gen::card(rng);
    let seps = [" ", "-", ".", "\u{2013}"];
    match evasion {
        "plain" => Some((String::new(), digits, String::new())),
        "separators" => {
            let sep = rng.one_of(&seps);
            let mut groups = gen::card_groups(&digits);
            if rng.chance(25) {
                // Mixed separators.
                let mut out = String::new();
                for (i, g) in groups.drain(..).enumerate() {
                    if i > 0 {
                        out.push_str(rng.one_of(&seps));
                    }
                    out.push_str(g);
                }
                return Some((String::new(), out, String::new()));
            }
            Some((String::new(), groups.join(sep), String::new()))
        }
        "glued" => {
            let after = if rng.chance(30) { "exp" } else { "" };
            Some((rng.pick(GLUE).to_string(), digits, after.to_string()))
        }
        "retry" => card_retry(rng, &digits),
        "mixed" => {
            let text = grouped(&digits, rng.one_of(&[" ", "-"]));
            Some((String::new(), dress(rng, &text, "mixed"), String::new()))
        }
        other => {
            let text = if rng.chance(50) {
                grouped(&digits, " ")
            } else {
                digits
            };
            Some((String::new(), dress(rng, &text, other), String::new()))
        }
    }
}

/// A card next to one more digit group, so the greedy match is too long
/// (trailing) or starts one group early (leading) and fails Luhn.
fn card_retry(rng: &mut Rng, digits: &str) -> Option<(String, String, String)> {
    let sep = rng.one_of(&[" ", "-"]);
    let text = grouped(digits, sep);
    let mut groups: Vec<String> = gen::card_groups(digits)
        .iter()
        .map(|g| g.to_string())
        .collect();
    let (before, after, card_at) = if rng.chance(50) {
        let extra = rng.digits_in(1, 3);
        groups.push(extra.clone());
        (String::new(), format!("{sep}{extra}"), 0)
    } else {
        // A group that could start a card itself, so the greedy match does.
        let lead = rng.one_of(&["4", "51", "55", "62", "37", "65"]);
        let extra = format!("{lead}{}", rng.digits(4 - lead.len()));
        groups.insert(0, extra.clone());
        (format!("ref {extra}{sep}"), String::new(), 1)
    };
    let card_groups = gen::card_groups(digits).len();
    // Ambiguous if any other run of whole groups is a valid card.
    for i in 0..groups.len() {
        for j in i + 1..=groups.len() {
            if (i, j) == (card_at, card_at + card_groups) {
                continue;
            }
            if gen::is_card(&groups[i..j].concat()) {
                return None;
            }
        }
    }
    Some((before, text, after))
}

fn mobile_text(rng: &mut Rng, evasion: &str) -> (String, String) {
    let m = gen::mobile(rng);
    let prefixed = |rng: &mut Rng, m: &str| match rng.below(5) {
        0 => format!("+86 {m}"),
        1 => format!("+86-{m}"),
        2 => format!("+86{m}"),
        3 => format!("0086 {m}"),
        _ => m.to_string(),
    };
    match evasion {
        "plain" => (String::new(), prefixed(rng, &m)),
        "separators" => {
            let sep = rng.one_of(&[" ", "-"]);
            let body = format!("{}{sep}{}{sep}{}", &m[..3], &m[3..7], &m[7..]);
            (String::new(), prefixed(rng, &body))
        }
        "glued" => (rng.pick(GLUE).to_string(), m),
        other => {
            let m = prefixed(rng, &m);
            (String::new(), dress(rng, &m, other))
        }
    }
}

/// Appends one labelled value of `rule` to `s`, written with `evasion`.
/// False when the generator refused an ambiguous form (the caller retries).
fn push_value(rng: &mut Rng, s: &mut Sample, rule: &'static str, evasion: &'static str) -> bool {
    let (glue, value, trail) = match rule {
        "credit_card" => match card_text(rng, evasion) {
            Some(v) => v,
            None => return false,
        },
        "cn_mobile" => {
            let (g, v) = mobile_text(rng, evasion);
            (g, v, String::new())
        }
        "id_card" => {
            let id = gen::id_number(rng);
            match evasion {
                "glued" => (rng.pick(GLUE).to_string(), id, String::new()),
                other => (String::new(), dress(rng, &id, other), String::new()),
            }
        }
        "private_key" => {
            let (key, truncated) = gen::private_key(rng);
            let begin_len = key.find('\n').unwrap_or(key.len());
            let (head, body) = key.split_at(begin_len);
            let head = dress(rng, head, evasion);
            let body = if evasion == "plain" {
                body.to_string()
            } else {
                gen::full_width(rng, body, 30)
            };
            let whole = format!("{head}{body}");
            // The BEGIN line is the finding (it blocks), whole key or truncated.
            let _ = truncated;
            s.value_prefix(rule, &whole, head.len(), evasion);
            return true;
        }
        _ => {
            let v = match rule {
                "email" => gen::email(rng),
                "aws_access_key" => gen::aws_key(rng),
                "github_token" => gen::github_token(rng),
                "slack_token" => gen::slack_token(rng),
                "openai_key" => gen::openai_key(rng),
                "stripe_secret_key" => gen::stripe_key(rng),
                "google_api_key" => gen::google_key(rng),
                _ => gen::keyword(rng),
            };
            (String::new(), dress(rng, &v, evasion), String::new())
        }
    };
    s.lit(&glue);
    s.value(rule, &value, evasion);
    s.lit(&trail);
    true
}

/// One sentence with a value of `rule`, sometimes a second value or a decoy.
fn positive(rng: &mut Rng, rule: &'static str) -> Sample {
    loop {
        let mut s = Sample::default();
        let evasion = rng.one_of(evasions(rule));
        let (before, after) = rng.one_of(templates(rule));
        s.lit(before);
        if !push_value(rng, &mut s, rule, evasion) {
            continue;
        }
        s.lit(after);
        if rng.chance(15) {
            s.lit(if rng.chance(50) { " Also " } else { " 另外 " });
            let other = rng.one_of(&["cn_mobile", "email", "credit_card"]);
            if !push_value(rng, &mut s, other, "plain") {
                continue;
            }
            s.lit(". ");
        }
        if rng.chance(20) {
            s.lit(" ");
            s.lit(&decoy(rng).1);
        }
        return s;
    }
}

/// Digits of `n` length with the first digit from `first`.
fn digits_from(rng: &mut Rng, first: &[u8], n: usize) -> String {
    format!("{}{}", char::from(rng.one_of(first)), rng.digits(n - 1))
}

/// A number-shaped or secret-shaped decoy (its kind, its text). Each is
/// refused here if by definition it is a value of some type.
pub fn decoy(rng: &mut Rng) -> (&'static str, String) {
    loop {
        let (kind, text) = decoy_candidate(rng);
        let runs: Vec<&str> = text
            .split(|c: char| !c.is_ascii_digit())
            .filter(|r| !r.is_empty())
            .collect();
        let real = runs
            .iter()
            .any(|r| gen::is_card(r) || gen::is_id(r) || gen::is_mobile(r));
        if !real {
            return (kind, text);
        }
    }
}

fn decoy_candidate(rng: &mut Rng) -> (&'static str, String) {
    match rng.below(11) {
        9 => {
            // Hexadecimal ids: digests, commit hashes, UUIDs; sometimes with a
            // long digit run inside.
            const HEX: &[u8] = b"0123456789abcdef";
            let len = rng.one_of(&[32, 40, 64]);
            let mut hex = rng.string_of(HEX, len);
            if rng.chance(40) {
                let tail = rng.below(8);
                let run = format!("{}{}", gen::mobile(rng), rng.digits(tail));
                let at = rng.range(1, hex.len() - run.len() - 1);
                hex.replace_range(at..at + run.len(), &run);
                hex.replace_range(at - 1..at, "a");
                hex.replace_range(at + run.len()..at + run.len() + 1, "f");
            }
            let text = match rng.below(3) {
                0 => format!("commit {}", &hex[..40.min(hex.len())]),
                1 => format!("sha256 {hex}"),
                _ => format!(
                    "request id {}-{}-{}-{}-{}",
                    &hex[..8],
                    &hex[8..12],
                    &hex[12..16],
                    &hex[16..20],
                    &hex[20..32]
                ),
            };
            ("hex-id", text)
        }
        10 => {
            let text = match rng.below(5) {
                0 => format!(
                    "server 10.{}.{}.{}",
                    rng.below(256),
                    rng.below(256),
                    rng.below(256)
                ),
                1 => format!("version 1.{}.{}", rng.below(40), rng.digits(9)),
                2 => format!("pi is 3.{}", rng.digits(18)),
                3 => format!(
                    "total ¥{},{},{}.{}",
                    rng.range(1, 999),
                    rng.digits(3),
                    rng.digits(3),
                    rng.digits(2)
                ),
                _ => format!(
                    "坐标 {}.{}, {}.{}",
                    rng.range(10, 60),
                    rng.digits(12),
                    rng.range(70, 140),
                    rng.digits(12)
                ),
            };
            ("numbers", text)
        }
        0 => {
            // Card-shaped, with an issuer prefix, failing Luhn.
            let (digits, _) = gen::card(rng);
            let last = digits.as_bytes()[digits.len() - 1] - b'0';
            let bad = (last + rng.range(1, 9) as u8) % 10;
            let digits = format!("{}{}", &digits[..digits.len() - 1], bad);
            let text = if digits.len() == 16 && rng.chance(50) {
                grouped(&digits, rng.one_of(&[" ", "-"]))
            } else {
                digits
            };
            ("luhn-fail", format!("card {text} was declined"))
        }
        1 => {
            // A longer digit run that holds a valid card, ID or mobile.
            let inner = match rng.below(3) {
                0 => gen::card(rng).0,
                1 => gen::id_number(rng).replace(['X', 'x'], "7"),
                _ => gen::mobile(rng),
            };
            let pad = 20usize.saturating_sub(inner.len()).max(2);
            let left = rng.below(pad + 1);
            let run = format!("{}{inner}{}", rng.digits(left), rng.digits(pad - left));
            ("long-run", format!("tracking no. {run} in transit"))
        }
        2 => {
            let date = format!(
                "20{}{:02}{:02}",
                rng.range(19, 26),
                rng.range(1, 12),
                rng.range(1, 28)
            );
            let n = rng.range(8, 14);
            let order = format!("{date}{}", rng.digits(n));
            let text = match rng.below(3) {
                0 => format!("订单号 {order} 已发货"),
                1 => format!("order #{order} shipped"),
                _ => format!("交易单号{order}，请保存"),
            };
            ("order", text)
        }
        3 => {
            let text = match rng.below(5) {
                0 => format!("ts={}", digits_from(rng, b"1", 10)),
                1 => format!("at 17{} ms", rng.digits(11)),
                2 => format!(
                    "logged 2024-{:02}-{:02}T09:{:02}:12.{}Z",
                    rng.range(1, 12),
                    rng.range(1, 28),
                    rng.below(60),
                    rng.digits(3)
                ),
                3 => format!(
                    "build 2024{:02}{:02}0930{}",
                    rng.range(1, 12),
                    rng.range(1, 28),
                    rng.digits(2)
                ),
                _ => format!("时间戳 {} 毫秒", digits_from(rng, b"1", 13)),
            };
            ("timestamp", text)
        }
        4 => {
            let text = match rng.below(8) {
                0 => format!("座机 010-{}", rng.digits(8)),
                1 => format!("call (0755) {} {}", rng.digits(4), rng.digits(4)),
                2 => format!("US office +1 (415) 555-{}", rng.digits(4)),
                3 => format!("hotline 400-{}-{}", rng.digits(3), rng.digits(4)),
                4 => format!("客服 {}", rng.pick(&["95588", "10086", "12306", "95533"])),
                5 => format!("号码 {} 不是手机", digits_from(rng, b"012", 11)),
                6 => format!("ref {} ok", digits_from(rng, b"1", 12)),
                _ => format!("+44 20 {} {}", rng.digits(4), rng.digits(4)),
            };
            ("phone-like", text)
        }
        5 => {
            let id = gen::id_number(rng);
            let text = if rng.chance(50) {
                // Wrong check character.
                let c = if id.ends_with('0') { '1' } else { '0' };
                format!("{}{c}", &id[..17])
            } else {
                // Month 13.
                format!("{}13{}", &id[..10], &id[12..])
            };
            ("id-like", format!("编号 {text}"))
        }
        6 => {
            let text = rng.one_of(&[
                "install lodash@4.17.21 first",
                "ping @alice in the channel",
                "mail admin@localhost for access",
                "write to sales at example dot com",
                "x@y.c is not an address",
                "user@host without a domain",
                "版本 react@18.2.0 已发布",
            ]);
            ("email-like", text.to_string())
        }
        7 => {
            let text = match rng.below(7) {
                0 => format!("AKIA{}", rng.string_of(b"ABCDEFGHIJ0123456789", 12)),
                1 => format!("ghp_{}", rng.string_of(b"abcdef0123456789", 20)),
                2 => format!("sk-{}", rng.string_of(b"abcdef0123", 12)),
                3 => format!("sk_test_{}", rng.string_of(b"abcdefABCDEF012345", 24)),
                4 => format!("xoxz-{}", rng.digits(12)),
                5 => format!("AIza{}", rng.string_of(b"abcdefXYZ0123", 20)),
                _ => "-----BEGIN PUBLIC KEY-----".to_string(),
            };
            ("secret-like", format!("placeholder {text} only"))
        }
        _ => {
            let text = rng.one_of(&[
                "I am confident about the plan",
                "internal tools are down",
                "这是个好机会，密切关注",
                "秘密花园开放了",
                "内部会议改期",
                "please distribute the notes",
                "only internal traffic",
            ]);
            ("keyword-like", text.to_string())
        }
    }
}

/// The whole corpus: `per_type` positive sentences per type (types
/// interleaved), then `decoys` decoy sentences.
pub fn build(seed: u64, per_type: usize, decoys: usize) -> Vec<Sample> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for _ in 0..per_type {
        for &rule in TYPES {
            out.push(positive(&mut rng, rule));
        }
    }
    for _ in 0..decoys {
        let (_, text) = decoy(&mut rng);
        let mut s = Sample::default();
        if rng.chance(50) {
            s.lit(rng.one_of(&["FYI: ", "备注：", "", "Note - "]));
        }
        s.lit(&text);
        s.lit(rng.one_of(&[".", "。", "", " thanks", "，谢谢"]));
        out.push(s);
    }
    out
}
