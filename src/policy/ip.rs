//! IP policy: the first gate a request meets, before any body is read.
//!
//! Operators list networks in `security_policy.yaml` (`ip_whitelist`, `ip_blacklist`,
//! `trusted_proxies`). Lists can be large (threat feeds run to 100k prefixes), so every
//! list is compiled once, at load time, into sorted, merged, disjoint address ranges per
//! family; a lookup is one binary search (about 17 probes for 100k prefixes) and touches
//! no lock and allocates nothing. Membership is all a decision needs, so overlapping and
//! adjacent prefixes are merged, which also keeps the tables small.
//!
//! The client address is the socket peer. A forwarding header is believed only when the
//! peer is a trusted proxy, and then only as far as the chain of trusted hops reaches:
//! each proxy appends the address it saw, so the right-most untrusted entry is the
//! client, and anything to its left was written by whoever the client was and proves
//! nothing. Every line of the header counts, in order, as one list (RFC 7230 §3.2.2):
//! a proxy that appends a line of its own instead of extending the last one must not
//! leave the client's first line in charge.
//!
//! Which header is read is the operator's choice (`client_ip_headers`, in precedence
//! order; default `[x-forwarded-for]`): `x-forwarded-for`, or `forwarded` (RFC 7239,
//! the `for=` parameter of each element, quoted IPv6 and ports included). The first
//! configured header present in the request is walked, the others are ignored. There
//! is no built-in "Forwarded if present, else X-Forwarded-For": behind a proxy that
//! writes only `X-Forwarded-For` (most do), the client's own `Forwarded` header
//! arrives untouched, and preferring it would let the client pick its address.
//! Configure `[forwarded, x-forwarded-for]` only when every trusted proxy writes (or
//! strips) `Forwarded`.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports
//! for an IPv4 client) are turned into plain IPv4 everywhere so that IPv4 rules apply
//! to them.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::HeaderMap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::de::{Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Longest forwarding chain walked (every line together); a longer header is cut, not
/// rejected, so a hostile header costs bounded work.
const MAX_XFF_HOPS: usize = 64;

/// A header that trusted proxies write the client chain into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the de facto standard).
    XForwardedFor,
    /// `Forwarded: for=client, for="[2001:db8::1]:4711"` (RFC 7239).
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        }
    }

    /// The hops of every line of this header in `headers`, right-most first.
    fn hops<'h>(self, headers: &'h HeaderMap) -> Box<dyn Iterator<Item = Option<IpAddr>> + 'h> {
        // A line that is not visible ASCII is garbage, like an unparseable entry.
        let lines = headers
            .get_all(self.name())
            .iter()
            .rev()
            .map(|v| v.to_str().unwrap_or(""));
        match self {
            ForwardedHeader::XForwardedFor => {
                Box::new(lines.flat_map(|line| line.rsplit(',').map(parse_hop)))
            }
            ForwardedHeader::Forwarded => {
                Box::new(lines.flat_map(|line| forwarded_for(line).into_iter().rev()))
            }
        }
    }
}

/// The default: `X-Forwarded-For` only.
pub const DEFAULT_CLIENT_IP_HEADERS: [ForwardedHeader; 1] = [ForwardedHeader::XForwardedFor];

/// One network from a policy file: `10.0.0.0/8`, `::1/128`, or a bare address (a host route).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(IpNet);

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network '{input}'; expected an IP address or CIDR like 10.0.0.0/8, 2001:db8::/32 or 192.168.1.7")]
pub struct CidrError {
    /// The offending text, as written (network addresses are not secrets).
    pub input: String,
}

impl Cidr {
    /// Wraps a network, normalising IPv4-mapped IPv6 networks to IPv4 and clearing host bits.
    pub fn new(net: IpNet) -> Self {
        let net = match net {
            IpNet::V6(v6) => match (v6.network().to_ipv4_mapped(), v6.prefix_len()) {
                (Some(v4), len) if len >= 96 => match Ipv4Net::new(v4, len - 96) {
                    Ok(n) => IpNet::V4(n),
                    Err(_) => IpNet::V6(v6),
                },
                _ => IpNet::V6(v6),
            },
            v4 => v4,
        };
        Cidr(net.trunc())
    }

    /// The network.
    pub fn net(&self) -> IpNet {
        self.0
    }

    /// Whether `ip` (normalised) falls inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl From<IpNet> for Cidr {
    fn from(net: IpNet) -> Self {
        Cidr::new(net)
    }
}

impl From<IpAddr> for Cidr {
    fn from(ip: IpAddr) -> Self {
        Cidr::new(IpNet::from(ip))
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || CidrError {
            input: s.to_string(),
        };
        if t.contains('/') {
            IpNet::from_str(t).map(Cidr::new).map_err(|_| err())
        } else {
            IpAddr::from_str(t).map(Cidr::from).map_err(|_| err())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address or CIDR like 10.0.0.0/8 or ::1/128")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cidr, E> {
                Cidr::from_str(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Sorted, disjoint, non-adjacent inclusive ranges; `starts` and `ends` are split so the
/// binary search walks a dense array of keys.
#[derive(Debug, Clone, Default)]
struct RangeSet<T> {
    starts: Vec<T>,
    ends: Vec<T>,
    /// Every `FENCE`-th start: small enough to stay in cache, so a lookup first narrows to
    /// one block without touching cold memory, then searches a block of a few cache lines.
    fence: Vec<T>,
}

/// Starts per fence block.
const FENCE: usize = 32;

/// The integer view of an address family, so one range table serves both.
trait Key: Copy + Ord {
    fn succ(self) -> Option<Self>;
}

impl Key for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Key for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl<T: Key> RangeSet<T> {
    fn build(mut ranges: Vec<(T, T)>) -> Self {
        ranges.sort_unstable();
        let mut starts = Vec::with_capacity(ranges.len());
        let mut ends: Vec<T> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            if let Some(last) = ends.last_mut() {
                // Merge overlapping and adjacent ranges; `succ` is None only at the top of
                // the address space, which then already covers everything after it.
                if last.succ().is_none_or(|next| s <= next) {
                    if e > *last {
                        *last = e;
                    }
                    continue;
                }
            }
            starts.push(s);
            ends.push(e);
        }
        starts.shrink_to_fit();
        ends.shrink_to_fit();
        let fence = starts.iter().step_by(FENCE).copied().collect();
        RangeSet {
            starts,
            ends,
            fence,
        }
    }

    #[inline]
    fn contains(&self, x: T) -> bool {
        let j = self.fence.partition_point(|&s| s <= x);
        if j == 0 {
            return false;
        }
        // starts[lo] <= x < starts[hi] (when hi is in range), so the answer is in this block.
        let lo = (j - 1) * FENCE;
        let hi = (lo + FENCE).min(self.starts.len());
        let Some(block) = self.starts.get(lo..hi) else {
            return false;
        };
        let i = lo + block.partition_point(|&s| s <= x);
        i > 0 && self.ends.get(i - 1).is_some_and(|&e| x <= e)
    }

    fn len(&self) -> usize {
        self.starts.len()
    }
}

/// A compiled list of networks of both families.
#[derive(Debug, Clone, Default)]
struct NetSet {
    v4: RangeSet<u32>,
    v6: RangeSet<u128>,
}

impl NetSet {
    fn build(cidrs: &[Cidr]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for c in cidrs {
            match c.0 {
                IpNet::V4(n) => v4.push(v4_range(n)),
                IpNet::V6(n) => v6.push(v6_range(n)),
            }
        }
        NetSet {
            v4: RangeSet::build(v4),
            v6: RangeSet::build(v6),
        }
    }

    /// `ip` must already be canonical.
    #[inline]
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.len() == 0 && self.v6.len() == 0
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

fn v4_range(n: Ipv4Net) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

fn v6_range(n: Ipv6Net) -> (u128, u128) {
    (u128::from(n.network()), u128::from(n.broadcast()))
}

/// Why the IP policy refused a request; also the audit and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpDenyReason {
    /// The address is inside `ip_blacklist`.
    Blacklist,
    /// `ip_whitelist` is not empty and the address is outside it.
    NotWhitelisted,
}

impl IpDenyReason {
    /// The stable label: `blacklist` or `not_whitelisted`.
    pub fn as_str(self) -> &'static str {
        match self {
            IpDenyReason::Blacklist => "blacklist",
            IpDenyReason::NotWhitelisted => "not_whitelisted",
        }
    }
}

impl fmt::Display for IpDenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of [`IpPolicy::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpDecision {
    /// The request may proceed.
    Allowed,
    /// The request gets 403 before its body is read.
    Denied {
        /// Which list refused it.
        reason: IpDenyReason,
    },
}

impl IpDecision {
    /// True for [`IpDecision::Allowed`].
    pub fn is_allowed(self) -> bool {
        matches!(self, IpDecision::Allowed)
    }
}

/// Compiled whitelist, blacklist and trusted proxies; cheap to query from many threads.
#[derive(Debug, Clone)]
pub struct IpPolicy {
    whitelist: NetSet,
    blacklist: NetSet,
    trusted: NetSet,
    /// The forwarding headers read from trusted proxies, in precedence order.
    headers: Vec<ForwardedHeader>,
}

impl Default for IpPolicy {
    fn default() -> Self {
        IpPolicy::new(&[], &[], &[])
    }
}

impl IpPolicy {
    /// Compiles the three lists. An empty whitelist allows every address.
    pub fn new(whitelist: &[Cidr], blacklist: &[Cidr], trusted_proxies: &[Cidr]) -> IpPolicy {
        IpPolicy {
            whitelist: NetSet::build(whitelist),
            blacklist: NetSet::build(blacklist),
            trusted: NetSet::build(trusted_proxies),
            headers: DEFAULT_CLIENT_IP_HEADERS.to_vec(),
        }
    }

    /// The same policy reading `headers` (in precedence order) from trusted proxies.
    pub fn with_client_ip_headers(mut self, headers: &[ForwardedHeader]) -> IpPolicy {
        self.headers = headers.to_vec();
        self
    }

    /// Decides for a client address; the blacklist wins over the whitelist.
    pub fn check(&self, ip: IpAddr) -> IpDecision {
        let ip = ip.to_canonical();
        if self.blacklist.contains(ip) {
            IpDecision::Denied {
                reason: IpDenyReason::Blacklist,
            }
        } else if !self.whitelist.is_empty() && !self.whitelist.contains(ip) {
            IpDecision::Denied {
                reason: IpDenyReason::NotWhitelisted,
            }
        } else {
            IpDecision::Allowed
        }
    }

    /// Whether `ip` is one of the `trusted_proxies`.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted.contains(ip.to_canonical())
    }

    /// The client address for a request from socket `peer` carrying one
    /// `X-Forwarded-For` value (a convenience over [`IpPolicy::client_ip_in`]).
    pub fn client_ip(&self, peer: IpAddr, x_forwarded_for: Option<&str>) -> IpAddr {
        let peer = peer.to_canonical();
        match x_forwarded_for {
            Some(xff) if self.trusted.contains(peer) => {
                self.walk(peer, xff.rsplit(',').map(parse_hop))
            }
            _ => peer,
        }
    }

    /// The client address for a request from socket `peer` with `headers`.
    ///
    /// Forwarding headers are read only when `peer` is a trusted proxy: the first of
    /// `client_ip_headers` present in the request, every line of it in order as one
    /// list. It is walked from the right, skipping trusted hops; the first untrusted hop
    /// is the client. An unparseable entry (or `unknown`, or an obfuscated node) stops
    /// the walk at the last hop known good (a trusted proxy), because nothing left of it
    /// can be attributed to anyone. If every hop is trusted, the left-most one is the
    /// client.
    pub fn client_ip_in(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusted.contains(peer) {
            return peer;
        }
        match self.headers.iter().find(|h| headers.contains_key(h.name())) {
            Some(h) => self.walk(peer, h.hops(headers)),
            None => peer,
        }
    }

    /// Walks `hops` (right-most first) from the trusted `peer`.
    fn walk(&self, peer: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
        let mut current = peer;
        for hop in hops.take(MAX_XFF_HOPS) {
            let Some(hop) = hop else {
                return current;
            };
            current = hop;
            if !self.trusted.contains(hop) {
                return hop;
            }
        }
        current
    }

    /// Number of merged ranges in (whitelist, blacklist, trusted proxies), for logs.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.whitelist.len(),
            self.blacklist.len(),
            self.trusted.len(),
        )
    }
}

/// One `X-Forwarded-For` entry: a bare address, or one with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`) as some proxies write it. Anything else is garbage.
fn parse_hop(raw: &str) -> Option<IpAddr> {
    let t = raw.trim();
    if t.is_empty() || t.len() > 64 {
        return None;
    }
    if let Ok(ip) = IpAddr::from_str(t) {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = SocketAddr::from_str(t) {
        return Some(sa.ip().to_canonical());
    }
    // `[2001:db8::1]` without a port.
    let inner = t.strip_prefix('[')?.strip_suffix(']')?;
    Ipv6Addr::from_str(inner)
        .ok()
        .map(|a| IpAddr::V6(a).to_canonical())
}

/// The `for=` node of every element of one `Forwarded` line, left to right (at most the
/// last [`MAX_XFF_HOPS`]): `None` for an element without one, or whose node is not an
/// address (`unknown`, an obfuscated `_name`, garbage, `for` given twice).
fn forwarded_for(line: &str) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for element in split_unquoted(line, b',') {
        if hops.len() >= 2 * MAX_XFF_HOPS {
            hops.drain(..MAX_XFF_HOPS);
        }
        let mut node = None;
        let mut seen = 0;
        for pair in split_unquoted(element, b';') {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("for") {
                seen += 1;
                node = forwarded_node(value.trim());
            }
        }
        hops.push(if seen == 1 { node } else { None });
    }
    let keep = hops.len().saturating_sub(MAX_XFF_HOPS);
    hops.drain(..keep);
    hops
}

/// Splits `s` at `sep` outside double-quoted strings (with `\` escapes inside them).
fn split_unquoted(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    let mut cuts = s.bytes().enumerate().filter_map(move |(i, b)| {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => quoted = !quoted,
            (false, _, b) if b == sep => return Some(i),
            _ => {}
        }
        None
    });
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let end = cuts.next().unwrap_or_else(|| {
            done = true;
            s.len()
        });
        let part = s.get(start..end).unwrap_or("");
        start = end + 1;
        Some(part)
    })
}

/// A `Forwarded` node (RFC 7239 §6): a token or quoted string holding an IPv4 address
/// or a bracketed IPv6 address, either with an optional port (numeric or obfuscated).
fn forwarded_node(value: &str) -> Option<IpAddr> {
    if value.len() > 80 {
        return None;
    }
    let node: String = match value.strip_prefix('"') {
        Some(rest) => unescape(rest.strip_suffix('"')?),
        None => value.to_string(),
    };
    if let Some(rest) = node.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return Ipv6Addr::from_str(addr)
            .ok()
            .map(|a| IpAddr::V6(a).to_canonical());
    }
    // IPv4, with or without `:port`. A bare IPv6 address is not valid here (RFC 7239
    // wants brackets), but one written by a trusted proxy is understood.
    let host = match node.split_once(':') {
        Some((v4, port)) if !port.contains(':') => v4,
        _ => node.as_str(),
    };
    IpAddr::from_str(host).ok().map(|ip| ip.to_canonical())
}

/// The content of a quoted string: `\x` is `x`.
fn unescape(quoted: &str) -> String {
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
