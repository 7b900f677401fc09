//! The floor under moltgate's load figures: a bare Pingora proxy with the
//! same TLS stack (rustls, TLS 1.3, HTTP/1.1 + h2) and no policy at all,
//! `proxy_pass` to one plain-HTTP upstream over pooled keep-alive
//! connections.
//!
//! Why it exists: `benches/load/run.sh` compares moltgate with nginx; this
//! shows how much of the gap is Pingora + rustls themselves and how much is
//! moltgate's own work (`FLOOR=1 benches/load/run.sh`). Not part of the
//! product; built only with `--features bench-floor`.
//!
//! ```sh
//! cargo build --release --example pingora_floor --features bench-floor
//! target/release/examples/pingora_floor LISTEN CERT KEY UPSTREAM THREADS
//! ```

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::{Opt, ServerConf};

/// The same allocator as moltgate, so the floor differs only by the work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, cert, key, upstream, threads] = args.as_slice() else {
        eprintln!("usage: pingora_floor LISTEN CERT KEY UPSTREAM THREADS");
        std::process::exit(2);
    };
    let Ok(threads) = threads.parse::<usize>() else {
        eprintln!("pingora_floor: THREADS must be a number, not '{threads}'");
        std::process::exit(2);
    };
    if !moltgate::tls::install_tls13_only_provider() {
        eprintln!("pingora_floor: cannot install the TLS 1.3-only provider");
        std::process::exit(1);
    }
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(Opt::default()), conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Floor {
            upstream: upstream.clone(),
        },
    );
    let mut tls = match pingora::listeners::tls::TlsSettings::intermediate(cert, key) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("pingora_floor: loading {cert} / {key}: {e}");
            std::process::exit(1);
        }
    };
    tls.enable_h2();
    proxy.add_tls_with_settings(listen, None, tls);
    server.add_service(proxy);
    server.run_forever();
}
