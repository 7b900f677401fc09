//! `moltgate-healthcheck`: the container health probe.
//!
//! The runtime image has no shell, curl or wget, so Docker's `HEALTHCHECK` and
//! compose's `healthcheck` run this instead (exec form). It uses only the
//! standard library and is built with `rustc` in the Dockerfile's build stage.
//!
//!     moltgate-healthcheck 127.0.0.1:9090 /healthz   # HTTP GET: healthy on 2xx
//!     moltgate-healthcheck 127.0.0.1:50051           # TCP connect only
//!
//! Exit 0 when healthy, 1 otherwise (with the reason on stderr), within 2 s.
//! The address must be an IP and port: no name resolution.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [addr] => connect(addr).map(|_| format!("{addr}: accepting connections")),
        [addr, path] if path.starts_with('/') => get(addr, path),
        _ => Err("usage: moltgate-healthcheck IP:PORT [/PATH]".to_string()),
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let sock: SocketAddr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not IP:PORT: {e}"))?;
    let stream =
        TcpStream::connect_timeout(&sock, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).ok();
    stream.set_write_timeout(Some(TIMEOUT)).ok();
    Ok(stream)
}

/// `GET path` over HTTP/1.0; healthy when the status is 2xx.
fn get(addr: &str, path: &str) -> Result<String, String> {
    let mut stream = connect(addr)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: moltgate-healthcheck\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < head.len() {
        match stream.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
        if head[..len].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let line = line.lines().next().unwrap_or("").to_string();
    match line.split(' ').nth(1) {
        Some(code) if code.len() == 3 && code.starts_with('2') => Ok(line),
        _ => Err(format!("GET {path} on {addr}: {line:?}")),
    }
}
