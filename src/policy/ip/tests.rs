//! Unit tests of `ip`.

use super::*;
use crate::config::yaml::parse_str;
use std::net::Ipv4Addr;
use std::path::Path;

fn c(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|s| c(s)).collect()
}

#[test]
fn cidr_parses_networks_and_bare_addresses() {
    assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
    assert_eq!(c("::1/128").to_string(), "::1/128");
    assert_eq!(c("10.1.2.3").to_string(), "10.1.2.3/32");
    assert_eq!(c("2001:db8::1").to_string(), "2001:db8::1/128");
    // Host bits are cleared so the network means what it says.
    assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
    assert_eq!(c(" 192.168.1.0/24 ").to_string(), "192.168.1.0/24");
    // IPv4-mapped networks become IPv4.
    assert_eq!(c("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
    assert_eq!(c("::ffff:10.0.0.1").to_string(), "10.0.0.1/32");
    assert_eq!(c("::/0").to_string(), "::/0");
}

#[test]
fn cidr_rejects_garbage_clearly() {
    for bad in [
        "",
        "10.0.0.0/33",
        "10.0.0/8",
        "::1/129",
        "banana",
        "10.0.0.0/",
        "1.2.3.4.5",
    ] {
        let e = bad.parse::<Cidr>().unwrap_err();
        assert!(
            e.to_string().contains("expected an IP address or CIDR"),
            "{e}"
        );
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lists {
    #[serde(default)]
    ip_whitelist: Vec<Cidr>,
    #[serde(default)]
    ip_blacklist: Vec<Cidr>,
}

#[test]
fn seed_shape_deserializes() {
    let text = "ip_whitelist: [192.168.1.0/24, 10.0.0.0/8]\nip_blacklist:\n  - ::1/128\n  - 203.0.113.9\n  - 2001:db8::/32\n";
    let l: Lists = parse_str(Path::new("policies/security_policy.yaml"), text).unwrap();
    assert_eq!(l.ip_whitelist, cs(&["192.168.1.0/24", "10.0.0.0/8"]));
    assert_eq!(
        l.ip_blacklist,
        cs(&["::1/128", "203.0.113.9/32", "2001:db8::/32"])
    );
    let back = serde_json::to_string(&l.ip_whitelist).unwrap();
    assert_eq!(back, r#"["192.168.1.0/24","10.0.0.0/8"]"#);
}

#[test]
fn bad_entry_is_located() {
    let text = "ip_whitelist:\n  - 10.0.0.0/8\n  - 10.0.0.0/40\n";
    let e = parse_str::<Lists>(Path::new("policies/security_policy.yaml"), text).unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(
        e.to_string()
            .starts_with("policies/security_policy.yaml:3:"),
        "{e}"
    );
    assert!(e.message.contains("invalid network '10.0.0.0/40'"), "{e}");
    let e = parse_str::<Lists>(Path::new("p.yaml"), "ip_whitelist: [12]\n").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
    assert!(e.message.contains("IP address or CIDR"), "{e}");
}

#[test]
fn empty_whitelist_allows_all() {
    let p = IpPolicy::new(&[], &[], &[]);
    for a in ["1.2.3.4", "::1", "0.0.0.0", "ffff::ffff"] {
        assert_eq!(p.check(ip(a)), IpDecision::Allowed, "{a}");
    }
}

#[test]
fn whitelist_and_blacklist_precedence() {
    let p = IpPolicy::new(
        &cs(&["192.168.1.0/24", "10.0.0.0/8", "2001:db8::/32"]),
        &cs(&["10.6.6.0/24", "2001:db8:bad::/48"]),
        &[],
    );
    let denied_bl = IpDecision::Denied {
        reason: IpDenyReason::Blacklist,
    };
    let denied_wl = IpDecision::Denied {
        reason: IpDenyReason::NotWhitelisted,
    };
    assert_eq!(p.check(ip("10.1.2.3")), IpDecision::Allowed);
    assert_eq!(p.check(ip("192.168.1.255")), IpDecision::Allowed);
    assert_eq!(p.check(ip("192.168.2.0")), denied_wl);
    assert_eq!(
        p.check(ip("10.6.6.6")),
        denied_bl,
        "blacklist wins inside whitelist"
    );
    assert_eq!(p.check(ip("2001:db8::1")), IpDecision::Allowed);
    assert_eq!(p.check(ip("2001:db8:bad::1")), denied_bl);
    assert_eq!(p.check(ip("2001:db9::1")), denied_wl);
    assert_eq!(p.check(ip("::1")), denied_wl);
    // Blacklist applies even with no whitelist.
    let p = IpPolicy::new(&[], &cs(&["203.0.113.0/24"]), &[]);
    assert_eq!(p.check(ip("203.0.113.7")), denied_bl);
    assert_eq!(p.check(ip("203.0.114.7")), IpDecision::Allowed);
    assert_eq!(
        denied_bl,
        IpDecision::Denied {
            reason: IpDenyReason::Blacklist
        }
    );
    assert_eq!(IpDenyReason::Blacklist.as_str(), "blacklist");
    assert_eq!(IpDenyReason::NotWhitelisted.to_string(), "not_whitelisted");
}

#[test]
fn mapped_addresses_are_normalised() {
    let p = IpPolicy::new(&cs(&["10.0.0.0/8"]), &cs(&["::ffff:10.9.0.0/112"]), &[]);
    assert_eq!(p.check(ip("::ffff:10.1.2.3")), IpDecision::Allowed);
    assert!(!p.check(ip("::ffff:10.9.1.1")).is_allowed());
    assert!(!p.check(ip("10.9.1.1")).is_allowed());
    assert!(!p.check(ip("::ffff:11.0.0.1")).is_allowed());
    assert!(c("10.0.0.0/8").contains(ip("::ffff:10.0.0.1")));
}

#[test]
fn edges_of_address_space_and_overlaps() {
    let p = IpPolicy::new(
        &[],
        &cs(&[
            "0.0.0.0/32",
            "255.255.255.255/32",
            "10.0.0.0/16",
            "10.0.1.0/24", // nested
            "10.1.0.0/16", // adjacent to 10.0.0.0/16 → merged
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120",
            "::/128",
        ]),
        &[],
    );
    for a in [
        "0.0.0.0",
        "255.255.255.255",
        "10.0.255.255",
        "10.1.255.255",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "::",
    ] {
        assert!(!p.check(ip(a)).is_allowed(), "{a}");
    }
    for a in [
        "0.0.0.1",
        "255.255.255.254",
        "10.2.0.0",
        "9.255.255.255",
        "::1",
    ] {
        assert!(p.check(ip(a)).is_allowed(), "{a}");
    }
    assert_eq!(p.sizes().1, 5, "10.0/16 and 10.1/16 merge");
    let all = IpPolicy::new(&[], &cs(&["0.0.0.0/0", "::/0", "10.0.0.0/8"]), &[]);
    assert!(!all.check(ip("1.1.1.1")).is_allowed());
    assert!(!all.check(ip("2001::1")).is_allowed());
    assert_eq!(all.sizes().1, 2);
}

/// Compares the range table against a linear scan on pseudo-random data.
#[test]
fn range_table_matches_linear_scan() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut list = Vec::new();
    for _ in 0..2000 {
        let r = next();
        if r % 2 == 0 {
            let a = Ipv4Addr::from(r as u32 & 0xff0f_ffff);
            list.push(Cidr::new(IpNet::V4(
                Ipv4Net::new(a, 8 + (r >> 40) as u8 % 25).unwrap(),
            )));
        } else {
            let a = Ipv6Addr::from(((r as u128) << 64) | 0x2001_0000_0000_0000_0000_0000_0000_0000);
            list.push(Cidr::new(IpNet::V6(
                Ipv6Net::new(a, 16 + (r >> 40) as u8 % 113).unwrap(),
            )));
        }
    }
    let p = IpPolicy::new(&[], &list, &[]);
    for _ in 0..20000 {
        let r = next();
        let probe = if r % 2 == 0 {
            IpAddr::V4(Ipv4Addr::from((r >> 16) as u32 & 0xff0f_ffff))
        } else {
            let base = list[(r >> 8) as usize % list.len()].net();
            match base {
                IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(
                    u128::from(n.network()) ^ ((r >> 20) as u128),
                )),
                IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(
                    u32::from(n.network()) ^ ((r >> 20) as u32 & 0xffff),
                )),
            }
        };
        let linear = list.iter().any(|c| c.contains(probe));
        assert_eq!(!p.check(probe).is_allowed(), linear, "{probe}");
    }
}

fn proxied() -> IpPolicy {
    IpPolicy::new(&[], &[], &cs(&["10.0.0.0/8", "2001:db8:ffff::/48"]))
}

#[test]
fn xff_ignored_from_untrusted_peer() {
    let p = proxied();
    assert_eq!(
        p.client_ip(ip("203.0.113.5"), Some("1.1.1.1")),
        ip("203.0.113.5")
    );
    assert_eq!(p.client_ip(ip("203.0.113.5"), None), ip("203.0.113.5"));
    assert_eq!(
        p.client_ip(ip("::ffff:203.0.113.5"), Some("10.0.0.1")),
        ip("203.0.113.5")
    );
}

#[test]
fn xff_walks_from_right_skipping_trusted() {
    let p = proxied();
    let peer = ip("10.0.0.1");
    assert_eq!(p.client_ip(peer, None), peer);
    assert_eq!(p.client_ip(peer, Some("198.51.100.7")), ip("198.51.100.7"));
    // The client forged a left entry; the proxy appended the real address.
    assert_eq!(
        p.client_ip(peer, Some("6.6.6.6, 198.51.100.7")),
        ip("198.51.100.7")
    );
    // Two trusted hops after the client.
    assert_eq!(
        p.client_ip(peer, Some("6.6.6.6, 198.51.100.7, 10.0.0.2,10.0.0.3")),
        ip("198.51.100.7")
    );
    assert_eq!(
        p.client_ip(
            ip("2001:db8:ffff::1"),
            Some("2001:db8:1::5, 2001:db8:ffff::9")
        ),
        ip("2001:db8:1::5")
    );
    // Every hop trusted: the left-most is the client.
    assert_eq!(
        p.client_ip(peer, Some("10.9.9.9, 10.0.0.2")),
        ip("10.9.9.9")
    );
    // Ports and brackets that some proxies write.
    assert_eq!(
        p.client_ip(peer, Some("198.51.100.7:5555")),
        ip("198.51.100.7")
    );
    assert_eq!(
        p.client_ip(peer, Some("[2001:db8:1::5]:443")),
        ip("2001:db8:1::5")
    );
    assert_eq!(
        p.client_ip(peer, Some("[2001:db8:1::5]")),
        ip("2001:db8:1::5")
    );
    assert_eq!(
        p.client_ip(peer, Some("::ffff:198.51.100.7")),
        ip("198.51.100.7")
    );
}

#[test]
fn xff_garbage_never_panics_and_falls_back() {
    let p = proxied();
    let peer = ip("10.0.0.1");
    for junk in [
        "",
        " ",
        ",",
        ",,,",
        "unknown",
        "1.2.3",
        "😀",
        "\u{0}",
        "[::1",
        "1.2.3.4:99999",
        "a,b,c",
    ] {
        assert_eq!(p.client_ip(peer, Some(junk)), peer, "{junk:?}");
    }
    // Garbage left of the real client is never reached.
    assert_eq!(
        p.client_ip(peer, Some("garbage, 198.51.100.7")),
        ip("198.51.100.7")
    );
    // Garbage right of a trusted hop stops at the last good trusted hop.
    assert_eq!(
        p.client_ip(peer, Some("198.51.100.7, junk, 10.0.0.2")),
        ip("10.0.0.2")
    );
    // A huge header costs bounded work and yields a trusted hop, never a forged one.
    let long = format!("6.6.6.6,{}", vec!["10.0.0.9"; 10_000].join(","));
    assert_eq!(p.client_ip(peer, Some(&long)), ip("10.0.0.9"));
    let long = "x".repeat(1 << 20);
    assert_eq!(p.client_ip(peer, Some(&long)), peer);
    // Arbitrary bytes-as-text never panic.
    let mut s = 7u32;
    for _ in 0..2000 {
        let mut h = String::new();
        for _ in 0..(s % 40) {
            s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
            h.push(char::from_u32(s >> 16 & 0x7f).unwrap_or(','));
        }
        let _ = p.client_ip(peer, Some(&h));
    }
}

/// Headers with the given (name, value) lines, in order.
fn lines(pairs: &[(&str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    h
}

/// Every `X-Forwarded-For` line counts, in order, as one list: a proxy
/// that appends its own line cannot leave the client's line in charge.
#[test]
fn xff_every_line_is_one_list() {
    let p = proxied();
    let peer = ip("10.0.0.1");
    let xff = |v: &[&[u8]]| {
        let pairs: Vec<(&str, &[u8])> = v.iter().map(|l| ("x-forwarded-for", *l)).collect();
        p.client_ip_in(peer, &lines(&pairs))
    };
    // The client forged the first line; the proxy appended the real address as a second.
    assert_eq!(xff(&[b"6.6.6.6", b"198.51.100.7"]), ip("198.51.100.7"));
    // Trusted hops across lines.
    assert_eq!(
        xff(&[b"6.6.6.6, 198.51.100.7", b"10.0.0.2", b"10.0.0.3"]),
        ip("198.51.100.7")
    );
    assert_eq!(
        xff(&[b"198.51.100.7", b"10.0.0.2,10.0.0.3"]),
        ip("198.51.100.7")
    );
    // Every hop trusted, across lines: the left-most.
    assert_eq!(xff(&[b"10.9.9.9", b"10.0.0.2"]), ip("10.9.9.9"));
    // A line that is not text, or is empty, is garbage: the walk stops at the
    // last trusted hop and never reaches the forged line left of it.
    assert_eq!(xff(&[b"6.6.6.6", b"\xff\xfe", b"10.0.0.2"]), ip("10.0.0.2"));
    assert_eq!(xff(&[b"6.6.6.6", b"", b"10.0.0.2"]), ip("10.0.0.2"));
    // One line behaves as before.
    assert_eq!(xff(&[b"6.6.6.6, 198.51.100.7"]), ip("198.51.100.7"));
    // From an untrusted peer nothing is read.
    let h = lines(&[
        ("x-forwarded-for", b"10.0.0.5"),
        ("x-forwarded-for", b"1.1.1.1"),
    ]);
    assert_eq!(p.client_ip_in(ip("203.0.113.5"), &h), ip("203.0.113.5"));
    // Many lines cost bounded work and end on a trusted hop.
    let many: Vec<(&str, &[u8])> = std::iter::once(("x-forwarded-for", &b"6.6.6.6"[..]))
        .chain(std::iter::repeat_n(
            ("x-forwarded-for", &b"10.0.0.9"[..]),
            1000,
        ))
        .collect();
    assert_eq!(p.client_ip_in(peer, &lines(&many)), ip("10.0.0.9"));
}

#[test]
fn forwarded_nodes_parse_per_rfc_7239() {
    let hops = |s: &str| forwarded_for(s);
    let v4 = |s: &str| Some(ip(s));
    assert_eq!(
        hops("for=192.0.2.60;proto=http;by=203.0.113.43"),
        vec![v4("192.0.2.60")]
    );
    assert_eq!(
        hops("For=\"[2001:db8:cafe::17]:4711\""),
        vec![v4("2001:db8:cafe::17")]
    );
    assert_eq!(
        hops("for=\"[2001:db8:cafe::17]\""),
        vec![v4("2001:db8:cafe::17")]
    );
    assert_eq!(hops("for=\"192.0.2.43:47011\""), vec![v4("192.0.2.43")]);
    assert_eq!(hops("for=192.0.2.43:_port"), vec![v4("192.0.2.43")]);
    assert_eq!(
        hops("for=192.0.2.43, for=198.51.100.17"),
        vec![v4("192.0.2.43"), v4("198.51.100.17")]
    );
    assert_eq!(hops("for=\"::ffff:10.1.2.3\""), vec![v4("10.1.2.3")]);
    // Commas and semicolons inside quoted strings do not split.
    assert_eq!(
        hops("for=\"_a,b;c\";by=x, for=198.51.100.17"),
        vec![None, v4("198.51.100.17")]
    );
    assert_eq!(
        hops("for=\"1.2.3\\\"4\", for=10.0.0.1"),
        vec![None, v4("10.0.0.1")]
    );
    // Nodes that are not addresses, elements without `for`, `for` twice.
    for junk in [
        "for=unknown",
        "for=_hidden",
        "proto=https;by=10.0.0.1",
        "for=10.0.0.1;for=6.6.6.6",
        "for=\"[2001:db8::1\"",
        "for=\"[2001:db8::1]x\"",
        "for=\"unterminated",
        "for=",
        "",
        "😀",
    ] {
        assert_eq!(hops(junk), vec![None], "{junk:?}");
    }
    // A hostile line keeps only the last hops.
    let long = vec!["for=10.0.0.9"; 10_000].join(",");
    assert_eq!(hops(&long).len(), MAX_XFF_HOPS);
}

#[test]
fn forwarded_walks_like_xff_when_configured() {
    let p = proxied().with_client_ip_headers(&[ForwardedHeader::Forwarded]);
    let peer = ip("10.0.0.1");
    let fwd = |v: &[&str]| {
        let pairs: Vec<(&str, &[u8])> = v.iter().map(|l| ("forwarded", l.as_bytes())).collect();
        p.client_ip_in(peer, &lines(&pairs))
    };
    assert_eq!(
        fwd(&["for=6.6.6.6", "for=198.51.100.7"]),
        ip("198.51.100.7")
    );
    assert_eq!(
        fwd(&["for=6.6.6.6, for=\"[2001:db8:1::5]:443\";proto=https, for=10.0.0.2"]),
        ip("2001:db8:1::5")
    );
    // `unknown` right of the client stops at the trusted hop before it.
    assert_eq!(
        fwd(&["for=198.51.100.7, for=unknown, for=10.0.0.2"]),
        ip("10.0.0.2")
    );
    // No Forwarded header: the peer (X-Forwarded-For is not read under this setting).
    let h = lines(&[("x-forwarded-for", b"198.51.100.7")]);
    assert_eq!(p.client_ip_in(peer, &h), peer);
    // Never from an untrusted peer.
    let h = lines(&[("forwarded", b"for=10.0.0.5")]);
    assert_eq!(p.client_ip_in(ip("203.0.113.5"), &h), ip("203.0.113.5"));
}

/// The default reads only `X-Forwarded-For`, so a client behind a proxy
/// that writes only that header cannot pick its address with `Forwarded`.
/// `[forwarded, x-forwarded-for]` prefers `Forwarded` when present.
#[test]
fn header_precedence_is_configured() {
    let peer = ip("10.0.0.1");
    let both = lines(&[
        ("forwarded", b"for=192.0.2.1"),
        ("x-forwarded-for", b"198.51.100.7"),
    ]);
    let xff_only = lines(&[("x-forwarded-for", b"198.51.100.7")]);
    let default = proxied();
    assert_eq!(default.client_ip_in(peer, &both), ip("198.51.100.7"));
    let lines_only_fwd = lines(&[("forwarded", b"for=192.0.2.1")]);
    assert_eq!(default.client_ip_in(peer, &lines_only_fwd), peer);
    let pref = proxied()
        .with_client_ip_headers(&[ForwardedHeader::Forwarded, ForwardedHeader::XForwardedFor]);
    assert_eq!(pref.client_ip_in(peer, &both), ip("192.0.2.1"));
    assert_eq!(pref.client_ip_in(peer, &xff_only), ip("198.51.100.7"));
    let none = proxied().with_client_ip_headers(&[]);
    assert_eq!(none.client_ip_in(peer, &both), peer);
}

#[test]
fn client_ip_headers_deserialize() {
    #[derive(Debug, Deserialize)]
    struct H {
        client_ip_headers: Vec<ForwardedHeader>,
    }
    let h: H = parse_str(
        Path::new("s.yaml"),
        "client_ip_headers: [forwarded, x-forwarded-for]\n",
    )
    .unwrap();
    assert_eq!(
        h.client_ip_headers,
        vec![ForwardedHeader::Forwarded, ForwardedHeader::XForwardedFor]
    );
    let e = parse_str::<H>(Path::new("s.yaml"), "client_ip_headers: [x-real-ip]\n").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn trusted_proxy_check() {
    let p = proxied();
    assert!(p.is_trusted_proxy(ip("10.2.3.4")));
    assert!(p.is_trusted_proxy(ip("::ffff:10.2.3.4")));
    assert!(!p.is_trusted_proxy(ip("11.2.3.4")));
    assert!(!IpPolicy::default().is_trusted_proxy(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
}
