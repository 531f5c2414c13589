//! A real HTTP server on 127.0.0.1 for fetcher tests: fixed routes, scripted
//! failures, a generated body of any size, and a request count per path.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What the server answers on one path.
pub enum Reply {
    Bytes(Vec<u8>),
    Status(u16),
    /// Answers `status` the first `times` requests, then `then`.
    FailThen {
        status: u16,
        times: usize,
        then: Vec<u8>,
    },
    /// `len` bytes from [`Generated`], produced while sending.
    Generated {
        len: u64,
    },
}

pub struct Server {
    base: String,
    http: Arc<tiny_http::Server>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(routes: Vec<(&str, Reply)>) -> Server {
        let http = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding 127.0.0.1"));
        let addr = http.server_addr().to_ip().expect("an IP listener");
        let routes: HashMap<String, Reply> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (h, s) = (hits.clone(), http.clone());
        let thread = std::thread::spawn(move || {
            for req in s.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or_default().to_string();
                let n = {
                    let mut hits = h.lock().unwrap();
                    let n = hits.entry(path.clone()).or_default();
                    *n += 1;
                    *n
                };
                let status = |code: u16| {
                    tiny_http::Response::from_string(format!("status {code}"))
                        .with_status_code(code)
                };
                // A client that hangs up mid-body is what some tests do; ignore it.
                let _ = match routes.get(&path) {
                    None => req.respond(status(404)),
                    Some(Reply::Status(code)) => req.respond(status(*code)),
                    Some(Reply::FailThen {
                        status: code,
                        times,
                        ..
                    }) if n <= *times => req.respond(status(*code)),
                    Some(Reply::Bytes(b)) | Some(Reply::FailThen { then: b, .. }) => {
                        req.respond(tiny_http::Response::from_data(b.clone()))
                    }
                    Some(Reply::Generated { len }) => req.respond(tiny_http::Response::new(
                        tiny_http::StatusCode(200),
                        vec![],
                        Generated::new(*len),
                        Some(*len as usize),
                        None,
                    )),
                };
            }
        });
        Server {
            base: format!("http://{addr}"),
            http,
            hits,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Requests received for `path` so far.
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

impl Drop for Server {
    /// Stops accepting and joins the serving thread.
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const BLOCK: usize = 1 << 20;

/// A deterministic pseudo-random stream: a fixed 1 MiB block whose first 8
/// bytes are replaced by the block number, so no two blocks are equal.
/// Holds one block in memory, whatever the length.
pub struct Generated {
    block: Vec<u8>,
    pos: u64,
    len: u64,
}

impl Generated {
    pub fn new(len: u64) -> Self {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let block = (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Generated { block, pos: 0, len }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len - self.pos;
        if left == 0 {
            return Ok(0);
        }
        let off = (self.pos % BLOCK as u64) as usize;
        let n = buf.len().min(BLOCK - off).min(left as usize);
        buf[..n].copy_from_slice(&self.block[off..off + n]);
        if off < 8 {
            let index = (self.pos / BLOCK as u64).to_le_bytes();
            let upto = n.min(8 - off);
            buf[..upto].copy_from_slice(&index[off..off + upto]);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

pub use pgimg_stdlib::fake::{host_tree as tree, TarMember as Member};

/// A gzip-compressed tar archive of `members`, written byte for byte.
pub fn tar_gz(members: &[Member]) -> Vec<u8> {
    pgimg_stdlib::fake::gzip(&pgimg_stdlib::fake::raw_tar(members))
}

pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Peak resident memory of this process so far (VmHWM), in KiB.
pub fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// `git daemon` serving the repositories under `base` over git:// on
/// 127.0.0.1 and 127.0.0.2 (a second address for the same repository that
/// needs no name lookup: a fresh root may have no `/etc/hosts` to say what
/// `localhost` is), the smart protocol a forge speaks (pgimg refuses
/// repositories named by a host path or `file://`); stopped on drop.
pub struct GitDaemon {
    child: std::process::Child,
    port: u16,
}

impl GitDaemon {
    pub fn serve(base: &std::path::Path) -> GitDaemon {
        // A port the kernel just handed out and took back: free for the daemon.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        // `git-daemon` itself, not `git daemon`: the `git` wrapper runs the
        // daemon as its child, and killing the wrapper on drop orphaned the
        // daemon, which kept listening (and held the test's stdout open).
        let exec_path = std::process::Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git (Debian's git package) runs");
        let exec_path = String::from_utf8_lossy(&exec_path.stdout)
            .trim()
            .to_string();
        let child = std::process::Command::new(std::path::Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--listen=127.0.0.1",
                "--listen=127.0.0.2",
                &format!("--port={port}"),
                "--export-all",
                "--informative-errors",
                &format!("--base-path={}", base.display()),
            ])
            .arg(base)
            .stdin(std::process::Stdio::null())
            // Its own process group: the daemon forks a server per
            // connection, which inherits the listening sockets; drop stops
            // them all.
            .process_group(0)
            .spawn()
            .expect("git daemon (Debian's git package) starts");
        let mut daemon = GitDaemon { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let listening = |ip: &str| std::net::TcpStream::connect((ip, port)).is_ok();
        while !(listening("127.0.0.1") && listening("127.0.0.2")) {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("git daemon exited with {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon does not listen on 127.0.0.1:{port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        daemon
    }

    /// `git://HOST:PORT/NAME`, for the repository `base/NAME`.
    pub fn url(&self, host: &str, name: &str) -> String {
        format!("git://{host}:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        // The per-connection servers are killed too, but are not our
        // children to wait for: wait until none holds the port any more.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline
            && ["127.0.0.1", "127.0.0.2"]
                .iter()
                .any(|ip| std::net::TcpStream::connect((*ip, self.port)).is_ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
