//! IP policy lookups with 100,000 prefixes (60% IPv4, 40% IPv6), the size of a large
//! threat feed: the per-request check must stay in the tens of nanoseconds.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use moltgate::policy::ip::{Cidr, IpPolicy};

/// Deterministic xorshift, so every run measures the same tables.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn prefixes(n: usize, rng: &mut Rng) -> Vec<Cidr> {
    (0..n)
        .map(|i| {
            let r = rng.next();
            let text = if i % 5 < 3 {
                let len = [16, 20, 24, 24, 28, 32, 32, 32][(r >> 60) as usize % 8];
                format!("{}/{len}", Ipv4Addr::from(r as u32))
            } else {
                let len = [32, 48, 56, 64, 64, 96, 128, 128][(r >> 60) as usize % 8];
                let addr =
                    (0x2000u128 << 112) | (u128::from(r) << 48) | u128::from(rng.next() >> 16);
                format!("{}/{len}", Ipv6Addr::from(addr))
            };
            text.parse()
                .unwrap_or_else(|_| Cidr::from(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let list = prefixes(100_000, &mut rng);
    let trusted: Vec<Cidr> = ["10.0.0.0/8", "fd00::/8"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();

    c.bench_function("ip/build/100k_prefixes", |b| {
        b.iter(|| IpPolicy::new(black_box(&[]), black_box(&list), black_box(&trusted)))
    });

    let blacklist = IpPolicy::new(&[], &list, &trusted);
    let whitelist = IpPolicy::new(&list, &[], &trusted);

    // Listed addresses (hits) and random addresses (mostly misses), 1,024 of each family so
    // the branch predictor cannot learn one path.
    let listed_v4: Vec<IpAddr> = list
        .iter()
        .filter(|c| c.net().addr().is_ipv4())
        .take(1024)
        .map(|c| c.net().addr())
        .collect();
    let listed_v6: Vec<IpAddr> = list
        .iter()
        .filter(|c| c.net().addr().is_ipv6())
        .take(1024)
        .map(|c| c.net().addr())
        .collect();
    let random_v4: Vec<IpAddr> = (0..1024)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next() as u32)))
        .collect();
    let random_v6: Vec<IpAddr> = (0..1024)
        .map(|_| {
            IpAddr::V6(Ipv6Addr::from(
                (0x2000u128 << 112) | u128::from(rng.next()) << 40,
            ))
        })
        .collect();
    let mapped: Vec<IpAddr> = listed_v4
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => *v6,
        })
        .collect();

    for (name, probes) in [
        ("listed_v4", &listed_v4),
        ("random_v4", &random_v4),
        ("listed_v6", &listed_v6),
        ("random_v6", &random_v6),
        ("mapped_v4", &mapped),
    ] {
        c.bench_function(&format!("ip/check/blacklist_100k/{name}"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                blacklist.check(black_box(probes[i]))
            })
        });
    }
    c.bench_function("ip/check/whitelist_100k/random_v4", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 1023;
            whitelist.check(black_box(random_v4[i]))
        })
    });

    let peer: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    c.bench_function("ip/client_ip/xff_3_hops", |b| {
        b.iter(|| {
            blacklist.client_ip(
                black_box(peer),
                black_box(Some("203.0.113.7, 198.51.100.9, 10.1.2.3")),
            )
        })
    });
    c.bench_function("ip/client_ip/untrusted_peer", |b| {
        let p = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        b.iter(|| blacklist.client_ip(black_box(p), black_box(Some("1.2.3.4"))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
