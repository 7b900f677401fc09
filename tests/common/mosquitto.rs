//! A real `mosquitto` broker per test (Debian's package), on a fresh
//! loopback port with its own config file and persistence directory, never
//! a broker the machine may already run. Persistence is on, so a
//! [`Mosquitto::restart`] (SIGTERM, which writes the database, then a new
//! process on the same port and directory) keeps persistent sessions: their
//! subscriptions and queued QoS 1 messages. [`Mosquitto::kill`] (SIGKILL)
//! loses what was not saved. Readiness is an MQTT CONNECT answered by a
//! CONNACK, never a sleep. Output is captured for failure messages.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a (re)started broker has to answer a CONNECT.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// A `mosquitto` child process, killed on drop.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Mosquitto {
    /// Starts a broker on a free loopback port and waits (bounded) until it
    /// answers a CONNECT. A port taken between picking and binding is
    /// retried on another one.
    pub fn start() -> Self {
        let mut last_logs = String::new();
        for _attempt in 1..=3 {
            let mut broker = Mosquitto {
                dir: tempfile::tempdir().unwrap(),
                port: super::free_port(),
                child: None,
                logs: Arc::new(Mutex::new(Vec::new())),
            };
            broker.write_config();
            if broker.spawn_and_wait() {
                return broker;
            }
            last_logs = broker.log_text();
        }
        panic!("mosquitto did not start in 3 attempts; its output:\n{last_logs}");
    }

    /// The persistence directory (also holds the config file).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The broker's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the broker gracefully (SIGTERM: it saves its database) and
    /// waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mosquitto ignored SIGTERM for 10 s; its output:\n{}",
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Kills the broker (SIGKILL) and reaps it: connections are reset, and
    /// nothing since the last save is kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker gracefully and starts it again on the same port and
    /// persistence directory; returns once it answers.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn_and_wait(),
            "mosquitto did not restart on port {}; its output:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// Starts the broker again after [`stop`](Self::stop) or [`kill`](Self::kill).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "mosquitto still runs");
        assert!(
            self.spawn_and_wait(),
            "mosquitto did not start again on port {}; its output:\n{}",
            self.port,
            self.log_text()
        );
    }

    /// Whether the broker answers a CONNECT within `within`.
    pub fn answers(&self, within: Duration) -> bool {
        connack(self.port, within)
    }

    /// Everything the broker wrote to stdout and stderr.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    fn write_config(&self) {
        let dir = self.dir.path().display();
        let conf = format!(
            "# A test broker (tests/common/mosquitto.rs).\n\
             listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 0\n\
             log_dest stderr\n\
             log_type error\n\
             log_type warning\n\
             log_type notice\n\
             log_type information\n\
             connection_messages true\n\
             # Started as root, mosquitto would switch to the mosquitto user,\n\
             # who cannot write the temp dir; as anyone else this is ignored.\n\
             user root\n",
            port = self.port,
        );
        std::fs::write(self.config_path(), conf).unwrap();
    }

    fn spawn_and_wait(&mut self) -> bool {
        let spawned = Command::new(binary())
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "mosquitto is not on PATH (Debian puts it in /usr/sbin): the MQTT tests start \
                 their own broker; install it with `bash scripts/deps.sh test`"
            ),
            Err(e) => panic!("cannot start mosquitto: {e}"),
        };
        self.capture(&mut child);
        self.child = Some(child);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if connack(self.port, Duration::from_millis(500)) {
                return true;
            }
            if Instant::now() > deadline {
                self.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn capture(&self, child: &mut Child) {
        let outs = [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ];
        for out in outs.into_iter().flatten() {
            let sink = self.logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `mosquitto` from PATH, else Debian's `/usr/sbin/mosquitto` (sbin is not
/// on every user's PATH).
fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("mosquitto").is_file()))
        .unwrap_or(false);
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    if !on_path && sbin.is_file() {
        sbin
    } else {
        PathBuf::from("mosquitto")
    }
}

/// Whether a broker on `port` answers an MQTT 3.1.1 CONNECT (clean
/// session, client id `ready-probe`) with a CONNACK that accepts it,
/// within `within`. Sends DISCONNECT after.
pub fn connack(port: u16, within: Duration) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, within) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(within));
    let _ = s.set_write_timeout(Some(within));
    let id = b"ready-probe";
    let mut connect = vec![0x10, (10 + 2 + id.len()) as u8];
    connect.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c]);
    connect.extend_from_slice(&[0x00, id.len() as u8]);
    connect.extend_from_slice(id);
    if s.write_all(&connect).is_err() {
        return false;
    }
    let mut ack = [0u8; 4];
    let ok = s.read_exact(&mut ack).is_ok() && ack == [0x20, 0x02, 0x00, 0x00];
    let _ = s.write_all(&[0xe0, 0x00]);
    ok
}
