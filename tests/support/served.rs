//! What the system tests serve on 127.0.0.1: folders (`python3 -m http.server`),
//! a download that never ends, and a signed apt repository built from Debian `.deb`s.
//!
//! Every server is a guard: dropping it stops it (and reaps the process), so
//! a failing test leaves no server behind. Use it from a test file with
//! `#[path = "support/served.rs"] mod served;`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use pgimg_stdlib::fake::host_tool;

/// Fingerprint of the committed throwaway key `tests/fixtures/apt-repo/signing-key.asc`;
/// its public half is `recipes/examples/assets/keys/pgimg-test-repo.asc`.
pub const SIGNING_KEY_FINGERPRINT: &str = "83539AC9B314AAAA23495BA6F0BC5918A10E1B2E";

/// Version suffix of the packages the test repository rebuilds, so apt's
/// candidate comes from it and not from the Debian mirror the image also uses.
pub const REPO_VERSION_SUFFIX: &str = "+pgimgtest1";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a host command; panics with its output when it fails.
pub fn host(argv: &[&str], cwd: Option<&Path>, env: &[(&str, &Path)]) -> String {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).env("LC_ALL", "C");
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let stdout = host_tool(&mut cmd, "tests/setup.sh installs the tools");
    String::from_utf8_lossy(&stdout).into_owned()
}

/// [`host`] with `paths` as the last arguments: the files a command such as
/// `cp` or `dpkg-deb -b` works on.
pub fn host_on(argv: &[&str], paths: &[&Path]) -> String {
    let mut all = argv.to_vec();
    all.extend(paths.iter().map(|p| p.to_str().expect("a UTF-8 path")));
    host(&all, None, &[])
}

/// `python3 -m http.server` serving a folder on 127.0.0.1 on a port the
/// kernel picked. Killed and reaped on drop. Its access log (one line per
/// request, with the status) is kept in a file.
pub struct Served {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub port: u16,
    log: PathBuf,
}

impl Served {
    /// Serves `dir`; the access log goes to `log`.
    pub fn folder(dir: &Path, log: &Path) -> Served {
        let log_file = std::fs::File::create(log).expect("creating the server log");
        let mut child = Command::new("python3")
            // -u: the "Serving HTTP on ... port N" line must not sit in a buffer.
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .arg("0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("starting python3 -m http.server");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("reading the server's first line");
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("python3 -m http.server did not say its port: {line:?}");
        };
        Served {
            child,
            _stdout: stdout,
            port,
            log: log.to_path_buf(),
        }
    }

    /// The release archives of `recipes/fixtures/releases` (made by
    /// `make-fixtures.sh`), logged to `dir/releases.log`: the builds' upstream
    /// downloads, offline.
    pub fn fixture_releases(dir: &Path) -> Served {
        Served::folder(
            &repo_file("recipes/fixtures/releases"),
            &dir.join("releases.log"),
        )
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The access log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether a GET of `path` was answered with 200.
    pub fn served(&self, path: &str) -> bool {
        let want = format!("\"GET {path} HTTP/1.1\" 200");
        self.log().lines().any(|l| l.contains(&want))
    }
}

impl Drop for Served {
    /// Kills the server and reaps it.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP server on 127.0.0.1 whose every response announces 100 MB and
/// then sends 1 KiB every 50 ms: a download that is in progress for as long
/// as a test needs. Stopped on drop.
pub struct Trickle {
    pub port: u16,
    /// Body bytes sent so far, over all connections.
    pub sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Trickle {
    pub fn start() -> Trickle {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the trickle server");
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (sent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, st) = (s.clone(), st.clone());
                std::thread::spawn(move || trickle(conn, &s, &st));
            }
        });
        Trickle {
            port,
            sent,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn trickle(mut conn: TcpStream, sent: &AtomicU64, stop: &AtomicBool) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let header = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                  Content-Length: 100000000\r\nConnection: close\r\n\r\n";
    if conn.write_all(header.as_bytes()).is_err() {
        return;
    }
    let chunk = [b'x'; 1024];
    while !stop.load(Ordering::SeqCst) {
        if conn.write_all(&chunk).is_err() {
            return;
        }
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Trickle {
    /// Stops accepting (a connection to itself wakes the accept) and sending.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A signed apt repository in `<root>/debian`: suite `stable`, component
/// `main`, the host's architecture, `InRelease` signed with the committed
/// test key.
pub struct AptRepo {
    pub root: PathBuf,
    /// Package name → the version the repository holds.
    pub versions: Vec<(String, String)>,
}

impl AptRepo {
    /// Downloads `packages` from the host's Debian mirror (`apt-get
    /// download`) and rebuilds each with [`REPO_VERSION_SUFFIX`] appended to
    /// its version: the same files, but a version only this repository has,
    /// so installing or downloading them provably goes through it.
    pub fn build(root: &Path, packages: &[&str]) -> AptRepo {
        let arch = host(&["dpkg", "--print-architecture"], None, &[])
            .trim()
            .to_string();
        let debian = root.join("debian");
        let pool = debian.join("pool/main");
        let binary = debian.join(format!("dists/stable/main/binary-{arch}"));
        let download = root.join("download");
        for d in [&pool, &binary, &download] {
            std::fs::create_dir_all(d).unwrap();
        }
        // apt drops privileges to _apt for downloads; a root-only temp dir is
        // fine (it warns and downloads as root).
        let mut argv = vec!["apt-get", "download", "-q"];
        argv.extend_from_slice(packages);
        host(&argv, Some(&download), &[]);
        let mut versions = Vec::new();
        for entry in std::fs::read_dir(&download).unwrap() {
            let deb = entry.unwrap().path();
            let tree = root.join("tree");
            host_on(&["dpkg-deb", "-R"], &[&deb, &tree]);
            let control = tree.join("DEBIAN/control");
            let text = std::fs::read_to_string(&control).unwrap();
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_else(|| panic!("{}: no {name}", deb.display()))
                    .to_string()
            };
            let (name, version) = (field("Package"), field("Version"));
            let new_version = format!("{version}{REPO_VERSION_SUFFIX}");
            let text = text.replace(
                &format!("Version: {version}\n"),
                &format!("Version: {new_version}\n"),
            );
            std::fs::write(&control, text).unwrap();
            let file_version = new_version
                .split_once(':')
                .map_or(new_version.as_str(), |v| v.1);
            let out = pool.join(format!("{name}_{file_version}_{arch}.deb"));
            host_on(
                &["dpkg-deb", "--root-owner-group", "-Zxz", "-b"],
                &[&tree, &out],
            );
            std::fs::remove_dir_all(&tree).unwrap();
            versions.push((name, new_version));
        }
        assert_eq!(versions.len(), packages.len(), "one .deb per package");

        let packages_index = host(&["apt-ftparchive", "packages", "pool"], Some(&debian), &[]);
        std::fs::write(binary.join("Packages"), packages_index).unwrap();
        host(&["gzip", "-k9n", "Packages"], Some(&binary), &[]);
        // apt-ftparchive would list a Release it finds in the folder it
        // indexes: write it outside, then move it in.
        let release = host(
            &[
                "apt-ftparchive",
                "-o",
                "APT::FTPArchive::Release::Suite=stable",
                "-o",
                "APT::FTPArchive::Release::Codename=stable",
                "-o",
                &format!("APT::FTPArchive::Release::Architectures={arch}"),
                "-o",
                "APT::FTPArchive::Release::Components=main",
                "release",
                "dists/stable",
            ],
            Some(&debian),
            &[],
        );
        let outside = root.join("Release");
        std::fs::write(&outside, release).unwrap();
        let dist = debian.join("dists/stable");
        std::fs::rename(&outside, dist.join("Release")).unwrap();
        sign(&dist);
        AptRepo {
            root: root.to_path_buf(),
            versions,
        }
    }
}

/// `gpg --clearsign` of `dist/Release` into `dist/InRelease` with the
/// committed key, in a throwaway GNUPGHOME whose agent is stopped afterwards
/// (otherwise a gpg-agent would outlive the test).
fn sign(dist: &Path) {
    let home = tempfile::Builder::new()
        .prefix("pgimg-gnupg-")
        .tempdir()
        .unwrap();
    let env = [("GNUPGHOME", home.path())];
    let key = repo_file("tests/fixtures/apt-repo/signing-key.asc");
    host(
        &[
            "gpg",
            "--batch",
            "--quiet",
            "--import",
            key.to_str().unwrap(),
        ],
        None,
        &env,
    );
    let result = std::panic::catch_unwind(|| {
        host(
            &[
                "gpg",
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--local-user",
                SIGNING_KEY_FINGERPRINT,
                "--digest-algo",
                "SHA512",
                "--clearsign",
                "--output",
                dist.join("InRelease").to_str().unwrap(),
                dist.join("Release").to_str().unwrap(),
            ],
            None,
            &env,
        )
    });
    let _ = Command::new("gpgconf")
        .args(["--kill", "all"])
        .env("GNUPGHOME", home.path())
        .status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
