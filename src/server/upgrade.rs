//! The graceful binary upgrade (`moltgate run --upgrade`) and the two files
//! the old and the new process share: the upgrade socket and the pid file.
//!
//! The wire format is Pingora's: the listening sockets' descriptors in one
//! `SCM_RIGHTS` message over a Unix stream socket, with their bind
//! addresses, space-separated, as the payload. The old process sends them
//! with Pingora's own [`Fds::send_to_sock`]. The new process receives them
//! here rather than through `Opt::upgrade` and Pingora's bootstrap
//! (pingora-core 0.9.1), because that receiver:
//!
//! - polls `accept` once a second (`server/transfer_fd/mod.rs:243-273`):
//!   the old process stops accepting as soon as it has sent the sockets,
//!   and new connections would then wait in the kernel's queue for up to a
//!   second; here the new process blocks in `poll(2)` and takes the sockets
//!   within milliseconds;
//! - ends the process with `process::exit(1)` when nothing arrives
//!   (`server/bootstrap_services.rs:233`), logging through `log`, which
//!   this process does not print, and unwraps its socket calls; here the
//!   error names the old pid, the socket and what to do.
//!
//! Pingora's own SIGQUIT path is not used either: it shuts down even when
//! the hand-over failed (`server/mod.rs:295-321`), leaving nobody to
//! accept. See [`super::lifecycle`].
//!
//! The sequence: the new process does all its start-up work (config,
//! certificates, policies), finds the old process through the pid file,
//! listens on the upgrade socket, sends the old process SIGQUIT and waits
//! (at most [`HANDOVER_WAIT`]) for the sockets; the old process sends them,
//! stops accepting and drains.
//!
//! The pid file (`upgrade_socket` with the extension `.pid`) names the
//! process that serves; that process holds an exclusive `flock(2)` on it for
//! as long as it does, so a stale file (a crashed process, a reused pid) is
//! never taken for a running instance. The old process lets go of it once it
//! has handed its sockets over, and the new one takes it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pingora::server::{Fds, ListenFds};

use crate::config::Config;

/// The longest path a Unix socket address holds (`sun_path`, less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The upgrade socket: `upgrade_socket:` from the config, else
/// `upgrade.sock` in the runtime directory, which every process of one user
/// on the host agrees on (a per-process path could never meet the next
/// process): `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`), else
/// `/run/moltgate` if this user may write there (the container image's
/// volume), else `$TMPDIR/moltgate-<uid>`.
pub fn socket_path(config: &Config) -> PathBuf {
    if let Some(p) = &config.upgrade_socket {
        return config.resolve(p);
    }
    // SAFETY: access(2) reads a NUL-terminated literal and nothing else.
    let run = unsafe { libc::access(c"/run/moltgate".as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    runtime_dir(
        std::env::var_os("RUNTIME_DIRECTORY"),
        run,
        std::env::temp_dir(),
        euid(),
    )
    .join("upgrade.sock")
}

/// The runtime directory, from `$RUNTIME_DIRECTORY` (its first entry),
/// whether `/run/moltgate` is writable, `$TMPDIR` and the user id.
fn runtime_dir(systemd: Option<std::ffi::OsString>, run: bool, tmp: PathBuf, uid: u32) -> PathBuf {
    let systemd = systemd
        .and_then(|v| std::env::split_paths(&v).next())
        .filter(|d| d.is_absolute());
    match systemd {
        Some(dir) => dir,
        None if run => PathBuf::from("/run/moltgate"),
        None => tmp.join(format!("moltgate-{uid}")),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The upgrade socket and the pid file beside it.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Where the new process receives the listening sockets.
    pub socket: PathBuf,
    /// Which process serves now (see the module documentation).
    pub pid: PathBuf,
}

impl Paths {
    /// The paths `config` names (or defaults to), absolute: the old and the
    /// new process may not share a working directory.
    pub fn of(config: &Config) -> Self {
        let mut socket = socket_path(config);
        if socket.is_relative() {
            if let Ok(cwd) = std::env::current_dir() {
                socket = cwd.join(socket);
            }
        }
        let pid = socket.with_extension("pid");
        Self { socket, pid }
    }

    /// Creates the directory (mode 0700) if it is missing, and checks that
    /// only this user can write in it: whoever can create the socket there
    /// receives the listening sockets.
    pub fn prepare(&self) -> Result<(), String> {
        let len = self.socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "upgrade socket {} is {len} bytes, more than a Unix socket path holds ({MAX_SOCKET_PATH}); set a shorter upgrade_socket:",
                self.socket.display()
            ));
        }
        let dir = self.socket.parent().unwrap_or(Path::new("/"));
        let failed = |e: std::io::Error| format!("upgrade socket directory {}: {e}", dir.display());
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(failed)?;
        }
        let meta = std::fs::metadata(dir).map_err(failed)?;
        if meta.uid() != euid() || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "upgrade socket directory {} (owner uid {}, mode {:o}) is not private to uid {}: another user could take the listening sockets over; use a directory of this user's, mode 0700",
                dir.display(),
                meta.uid(),
                meta.mode() & 0o7777,
                euid()
            ));
        }
        Ok(())
    }
}

/// The pid file, held (locked) by this process while it serves.
#[derive(Debug)]
pub struct PidFile {
    file: File,
    path: PathBuf,
}

/// Why the pid file was not taken.
#[derive(Debug)]
pub enum Held {
    /// Another live process holds it (its pid, when readable).
    By(Option<u32>),
    /// It could not be opened, locked or written.
    Io(std::io::Error),
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::By(Some(pid)) => write!(f, "the pid file is held by pid {pid}"),
            Held::By(None) => write!(f, "the pid file is held by another process"),
            Held::Io(e) => write!(f, "pid file: {e}"),
        }
    }
}

impl PidFile {
    /// Takes the pid file if no live process holds it.
    pub fn try_claim(path: &Path) -> Result<Self, Held> {
        let mut file = open_rw(path).map_err(Held::Io)?;
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(Held::Io)? {
            return Err(Held::By(read_pid(&mut file)));
        }
        Self::write(file, path).map_err(Held::Io)
    }

    /// Takes the pid file, waiting for the process that holds it to let go
    /// (the old process of an upgrade does once the sockets are handed over).
    pub fn claim_when_free(path: &Path) -> std::io::Result<Self> {
        let file = open_rw(path)?;
        flock(&file, libc::LOCK_EX)?;
        Self::write(file, path)
    }

    fn write(mut file: File, path: &Path) -> std::io::Result<Self> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Removes the file (a clean stop: no process serves any more), then
    /// lets go of the lock.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
}

/// `flock(2)`: true when taken, false when `LOCK_NB` found it held.
fn flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: the descriptor belongs to `file`, open for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The pid of the instance that serves now: the holder of the pid file.
pub fn running_instance(paths: &Paths) -> Result<u32, String> {
    let none = |why: String| {
        format!(
            "--upgrade: no running moltgate to take over: {why}. Start without --upgrade, or give both processes the same upgrade_socket (now {})",
            paths.socket.display()
        )
    };
    let mut file = File::open(&paths.pid)
        .map_err(|e| none(format!("cannot open {}: {e}", paths.pid.display())))?;
    if flock(&file, libc::LOCK_SH | libc::LOCK_NB).map_err(|e| none(e.to_string()))? {
        return Err(none(format!(
            "no process holds {} (it is stale)",
            paths.pid.display()
        )));
    }
    read_pid(&mut file).ok_or_else(|| none(format!("{} names no pid", paths.pid.display())))
}

/// How long the new process waits for the old one to send its sockets.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// The most sockets one hand-over carries (Pingora's receiver takes 32).
const MAX_FDS: usize = 32;

/// The new process's side: listens on the upgrade socket, sends `pid`
/// SIGQUIT, and receives its listening sockets.
pub fn take_over(paths: &Paths, pid: u32) -> Result<Fds, String> {
    let socket = &paths.socket;
    let at = |e: std::io::Error| format!("--upgrade: upgrade socket {}: {e}", socket.display());
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(e)),
    }
    let listener = UnixListener::bind(socket).map_err(at)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(at)?;
    let received = signal_and_receive(&listener, pid);
    let _ = std::fs::remove_file(socket);
    let (addrs, fds) = received.map_err(|e| {
        format!(
            "--upgrade: pid {pid} did not hand its listening sockets over through {}: {e}. It keeps serving; is its upgrade_socket the same?",
            socket.display()
        )
    })?;
    if addrs.len() != fds.len() || fds.is_empty() {
        close_all(&fds);
        return Err(format!(
            "--upgrade: pid {pid} sent {} sockets for {} addresses",
            fds.len(),
            addrs.len()
        ));
    }
    let mut table = Fds::new();
    table.deserialize(addrs, fds);
    Ok(table)
}

/// Sends SIGQUIT to `pid`, then waits for its connection and message.
fn signal_and_receive(
    listener: &UnixListener,
    pid: u32,
) -> Result<(Vec<String>, Vec<RawFd>), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|e| e.to_string())?;
    // SAFETY: kill(2) with the pid read from the locked pid file.
    if unsafe { libc::kill(pid, libc::SIGQUIT) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("cannot send it SIGQUIT: {e}"));
    }
    let stream = accept_within(listener, HANDOVER_WAIT)?;
    stream
        .set_read_timeout(Some(HANDOVER_WAIT))
        .map_err(|e| e.to_string())?;
    receive_fds(&stream).map_err(|e| e.to_string())
}

/// Accepts one connection within `wait`.
fn accept_within(listener: &UnixListener, wait: Duration) -> Result<UnixStream, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("nothing arrived within {} s", wait.as_secs()));
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the listener, which outlives the call.
        unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
    }
}

/// Reads one message: the addresses (payload) and the descriptors
/// (`SCM_RIGHTS`, close-on-exec).
fn receive_fds(stream: &UnixStream) -> std::io::Result<(Vec<String>, Vec<RawFd>)> {
    let mut payload = [0u8; 2048];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // u64 words: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; 64];
    // SAFETY: msghdr is plain data; the pointers set below outlive recvmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: the socket is open; msg points at live buffers.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* walk stays within msg_controllen, as the kernel filled it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..(bytes / std::mem::size_of::<RawFd>()).min(MAX_FDS) {
                    fds.push(data.add(i).read_unaligned());
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || n == 0 {
        close_all(&fds);
        let why = if n == 0 {
            "closed without a message"
        } else {
            "too many sockets"
        };
        return Err(std::io::Error::other(why));
    }
    match std::str::from_utf8(&payload[..n as usize]) {
        Ok(text) => Ok((
            text.split_ascii_whitespace().map(String::from).collect(),
            fds,
        )),
        Err(e) => {
            close_all(&fds);
            Err(std::io::Error::other(e))
        }
    }
}

fn close_all(fds: &[RawFd]) {
    for &fd in fds {
        // SAFETY: received descriptors that nothing else owns.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
    }
}

/// The old process's side: sends every listening socket to the process
/// waiting on `socket` (Pingora retries for about 5 s).
pub fn hand_over(fds: &ListenFds, socket: &Path) -> Result<(), String> {
    let path = socket
        .to_str()
        .ok_or_else(|| format!("upgrade socket {} is not UTF-8", socket.display()))?;
    let table = fds.lock();
    if table.is_empty() {
        return Err("no listening socket to hand over".into());
    }
    table
        .send_to_sock(path)
        .map(|_| ())
        .map_err(|e| format!("no new process took the listening sockets through {path}: {e}"))
}

/// Closes the received sockets no listener of this config claims (an old
/// process that listened elsewhere): an unclaimed socket would queue
/// connections nobody accepts.
pub fn close_unclaimed(fds: &mut Fds, keep: &[String]) {
    let keep = keep.iter().cloned().collect();
    for addr in fds.close_unclaimed(&keep) {
        tracing::warn!(address = %addr, "the old instance listened on an address this config does not; closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_dir_prefers_systemd_then_run_then_tmp() {
        let tmp = PathBuf::from("/tmp");
        let dir = |systemd: Option<&str>, run| {
            runtime_dir(systemd.map(Into::into), run, tmp.clone(), 10001)
        };
        assert_eq!(
            dir(Some("/run/moltgate"), false),
            Path::new("/run/moltgate")
        );
        assert_eq!(dir(Some("/run/a:/run/b"), true), Path::new("/run/a"));
        assert_eq!(dir(None, true), Path::new("/run/moltgate"));
        assert_eq!(dir(Some(""), false), Path::new("/tmp/moltgate-10001"));
        assert_eq!(
            dir(Some("relative"), false),
            Path::new("/tmp/moltgate-10001")
        );
    }

    #[test]
    fn pid_file_is_held_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            socket: dir.path().join("u.sock"),
            pid: dir.path().join("u.pid"),
        };
        assert!(running_instance(&paths)
            .unwrap_err()
            .contains("no running moltgate"));
        let held = PidFile::try_claim(&paths.pid).unwrap();
        // flock locks belong to the open file description, so a second open
        // in this process is refused like another process would be.
        match PidFile::try_claim(&paths.pid) {
            Err(Held::By(pid)) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        assert_eq!(running_instance(&paths).unwrap(), std::process::id());
        drop(held);
        let stale = running_instance(&paths).unwrap_err();
        assert!(stale.contains("stale"), "{stale}");
        PidFile::try_claim(&paths.pid).unwrap().remove();
        assert!(!paths.pid.exists());
    }

    #[test]
    fn prepare_creates_a_private_directory_and_refuses_a_shared_one() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths {
            socket: dir.path().join("run/u.sock"),
            pid: dir.path().join("run/u.pid"),
        };
        paths.prepare().unwrap();
        let mode = std::fs::metadata(dir.path().join("run")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let e = paths.prepare().unwrap_err();
        assert!(e.contains("is not private"), "{e}");
        let long = Paths {
            socket: dir.path().join("x".repeat(120)),
            pid: dir.path().join("p"),
        };
        assert!(long
            .prepare()
            .unwrap_err()
            .contains("more than a Unix socket path holds"));
    }
}
