//! A real `redis-server` per test, on a fresh loopback port and a unix
//! socket in its own temp dir, never a Redis the machine may already run:
//! no persistence (`--save '' --appendonly no`), output captured for
//! failure messages. Tests can stop it (`pause`, SIGSTOP: connections hang),
//! kill it (connections are refused), and start it again on the same port
//! and socket (`restart`), and talk to it directly with a small RESP client
//! (`command`, `query`, `keys`) to assert what the gateway stored.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a (re)started server has to answer `PING`.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    paused: bool,
    logs: Arc<Mutex<Vec<String>>>,
}

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl std::fmt::Display for Reply {
    /// Simple strings and bulk strings as they are, integers in decimal,
    /// nil as `(nil)`, errors as `-ERR …`, arrays one element per line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Simple(s) | Reply::Bulk(Some(s)) => f.write_str(s),
            Reply::Error(e) => write!(f, "-{e}"),
            Reply::Int(i) => write!(f, "{i}"),
            Reply::Bulk(None) | Reply::Array(None) => f.write_str("(nil)"),
            Reply::Array(Some(items)) => {
                let lines: Vec<String> = items.iter().map(|r| r.to_string()).collect();
                f.write_str(&lines.join("\n"))
            }
        }
    }
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits (bounded) until it
    /// answers `PING`. A port taken between picking and binding is retried
    /// on another one.
    pub fn start() -> Self {
        let mut last_logs = String::new();
        for _attempt in 1..=3 {
            let mut server = RedisServer {
                dir: tempfile::tempdir().unwrap(),
                port: super::free_port(),
                child: None,
                paused: false,
                logs: Arc::new(Mutex::new(Vec::new())),
            };
            if server.spawn_and_wait() {
                return server;
            }
            last_logs = server.log_text();
        }
        panic!("redis-server did not start in 3 attempts; its output:\n{last_logs}");
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The unix socket the server also listens on.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `unix:///path/redis.sock`.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the process (SIGSTOP) and waits until the kernel says it is
    /// stopped: connections still open (the listen backlog accepts) but
    /// nothing is answered, the way a hung server looks.
    pub fn pause(&mut self) {
        assert!(!self.paused, "already paused");
        self.signal(libc::SIGSTOP);
        self.paused = true;
        self.wait_state(|s| s == 'T', "stopped");
    }

    /// Continues a paused process (SIGCONT) and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.paused, "not paused");
        self.signal(libc::SIGCONT);
        self.paused = false;
        self.wait_state(|s| s != 'T', "running");
        self.wait_ready_or_panic("after SIGCONT");
    }

    /// Kills the process (SIGKILL) and reaps it: connections are refused
    /// from now on, and open ones are reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                // A stopped process dies of SIGKILL too, but continue it
                // first so nothing depends on that.
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                self.paused = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and socket (killing it
    /// first if it still runs) and waits until it answers. The data is gone
    /// (no persistence): a restarted Redis is an empty one.
    pub fn restart(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(self.socket_path());
        assert!(
            self.spawn_and_wait(),
            "redis-server did not restart on port {}; its output:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// Whether the server answers `PING` within `within`.
    pub fn answers(&self, within: Duration) -> bool {
        ping(self.port, within)
    }

    /// One command; panics on an I/O failure (5 s) or an error reply.
    pub fn command(&self, args: &[&str]) -> String {
        match self.query(args) {
            Reply::Error(e) => panic!("redis {args:?}: error reply {e}"),
            r => r.to_string(),
        }
    }

    /// One command's reply; panics on an I/O failure (5 s).
    pub fn query(&self, args: &[&str]) -> Reply {
        self.try_query(args, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// One command's reply, or the I/O error (connect, write, or no answer
    /// within `timeout`).
    pub fn try_query(&self, args: &[&str], timeout: Duration) -> std::io::Result<Reply> {
        query(self.port, args, timeout)
    }

    /// `KEYS pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        match self.query(&["KEYS", pattern]) {
            Reply::Array(Some(items)) => {
                let mut keys: Vec<String> = items.iter().map(|r| r.to_string()).collect();
                keys.sort();
                keys
            }
            other => panic!("KEYS {pattern}: {other:?}"),
        }
    }

    /// Everything the server wrote to stdout and stderr.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    fn spawn_and_wait(&mut self) -> bool {
        let socket = self.socket_path();
        let spawned = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: the shared-state tests start their own; \
                 install it with `bash scripts/deps.sh test`"
            ),
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let sink = self.logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        self.child = Some(child);
        self.paused = false;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if ping(self.port, Duration::from_millis(200)) {
                return true;
            }
            if Instant::now() > deadline {
                self.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_ready_or_panic(&self, when: &str) {
        let deadline = Instant::now() + START_DEADLINE;
        while !ping(self.port, Duration::from_millis(200)) {
            assert!(
                Instant::now() < deadline,
                "redis-server does not answer PING {when}; its output:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, sig: i32) {
        let pid = self.pid().expect("redis-server is not running");
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        let rc = unsafe { libc::kill(pid as i32, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits (bounded) until /proc says the process state satisfies `ok`.
    fn wait_state(&self, ok: impl Fn(char) -> bool, what: &str) {
        let pid = self.pid().expect("redis-server is not running");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state is the first field after the parenthesised name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            if state.is_some_and(&ok) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server {pid} never became {what} (stat: {stat:?})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a server on `port` answers `PING` with `+PONG` within `within`.
pub fn ping(port: u16, within: Duration) -> bool {
    matches!(query(port, &["PING"], within), Ok(Reply::Simple(s)) if s == "PONG")
}

/// One command over a fresh TCP connection, with `timeout` for the connect
/// and for each read and write.
pub fn query(port: u16, args: &[&str], timeout: Duration) -> std::io::Result<Reply> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    (&stream).write_all(&out)?;
    read_reply(&mut BufReader::new(&stream))
}

fn read_reply(r: &mut impl BufRead) -> std::io::Result<Reply> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a reply",
        ));
    }
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(1.min(line.len()));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad length in {line:?}")))
    };
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Int(number()?),
        "$" => {
            let n = number()?;
            if n < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n = number()?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(read_reply(r)?);
                }
                Reply::Array(Some(items))
            }
        }
        _ => return Err(bad(format!("unknown reply {line:?}"))),
    })
}
