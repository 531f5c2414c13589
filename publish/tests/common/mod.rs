//! Test harness: a real moto server on 127.0.0.1, a recording proxy in front of it, fixture images.
#![allow(dead_code)]

#[path = "../../../tests/support/moto.rs"]
mod moto_path;
#[allow(unused_imports)]
pub use moto_path::gcs_emulator;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pgimg_publish::progress::{Progress, Unit};

/// Access key the tests sign with (moto accepts any).
pub const ACCESS_KEY: &str = "AKIDPGIMGTEST";

/// Credentials and safety for every SDK client the tests make, set once
/// before any client exists: the tests' own key pair, no instance metadata
/// probing (traffic must stay on 127.0.0.1), no profile from the machine.
pub fn aws_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (k, v) in aws_env_vars("testing-secret-key") {
            // SAFETY (of the race): runs once, before any test in this binary
            // creates a client or thread that reads the environment.
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_PROFILE");
        std::env::remove_var("AWS_SESSION_TOKEN");
    });
}

/// The environment a child process (the example binary) gets.
pub fn aws_env_vars(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ("AWS_CONFIG_FILE", "/dev/null".to_string()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null".to_string()),
    ]
}

/// A `moto_server` child process on a free port; killed and reaped on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    _log_dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        aws_env();
        let exe = moto_path::moto_server();
        let port = free_port();
        let log_dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(log_dir.path().join("moto.log")).unwrap();
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting moto_server");
        let mut moto = Moto {
            child,
            port,
            _log_dir: log_dir,
        };
        moto.wait_ready();
        moto
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self._log_dir.path().join("moto.log"))
                    .unwrap_or_default();
                panic!("moto_server exited with {status} before answering:\n{log}");
            }
            if let Ok(resp) = http_raw(self.port, "GET", "/moto-api/", &[], b"") {
                if resp.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "moto_server did not answer on 127.0.0.1:{} within 60 s",
            self.port
        );
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `f` on a small runtime of its own (the library builds its runtime
/// per call, so tests stay synchronous).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// SDK configuration pointing straight at moto (not through a recorder).
pub fn sdk_config(endpoint: &str, region: &str) -> aws_config::SdkConfig {
    aws_env();
    block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .endpoint_url(endpoint)
            .load(),
    )
}

pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(&sdk_config(endpoint, "us-east-1"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

pub fn create_bucket(endpoint: &str, bucket: &str) {
    let s3 = s3_client(endpoint);
    block_on(s3.create_bucket().bucket(bucket).send()).expect("CreateBucket");
}

pub fn multipart_uploads(endpoint: &str, bucket: &str) -> Vec<String> {
    let s3 = s3_client(endpoint);
    let listed =
        block_on(s3.list_multipart_uploads().bucket(bucket).send()).expect("ListMultipartUploads");
    listed
        .uploads()
        .iter()
        .map(|u| u.upload_id().unwrap_or_default().to_string())
        .collect()
}

/// PutObject with no metadata, as another tool would upload.
pub fn put_object(endpoint: &str, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
    let s3 = s3_client(endpoint);
    let put = s3
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into().into());
    block_on(put.send()).expect("PutObject");
}

pub fn get_object(endpoint: &str, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let s3 = s3_client(endpoint);
    block_on(async {
        match s3.get_object().bucket(bucket).key(key).send().await {
            Ok(o) => Some(o.body.collect().await.unwrap().into_bytes().to_vec()),
            Err(e)
                if e.as_service_error()
                    .map(|s| s.is_no_such_key())
                    .unwrap_or(false) =>
            {
                None
            }
            Err(e) => panic!("GetObject {key}: {e:?}"),
        }
    })
}

/// A deterministic pseudo-random byte stream (xorshift), so fixtures need no
/// `rand` and failures reproduce.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Self {
        Noise(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
            // Never all-zero chunks, so "non-zero region" means what it says.
            chunk[0] |= 1;
        }
    }
}

/// A sparse file of `size` bytes with `regions` random non-zero regions
/// (64 KiB to 4 MiB each) at random offsets; the rest are holes.
pub fn sparse_image(dir: &Path, name: &str, size: u64, regions: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let mut noise = Noise::new(seed);
    for _ in 0..regions {
        let len = (64 << 10) + noise.next() % (4 << 20);
        let len = len.min(size);
        let offset = noise.next() % (size - len + 1);
        let mut buf = vec![0u8; len as usize];
        noise.fill(&mut buf);
        f.write_all_at(&buf, offset).unwrap();
    }
    // Data at the very end, so the last (short) part is non-empty.
    f.write_all_at(b"end", size - 3).unwrap();
    path
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha256_file_hex(path: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Called with the phase and its position after each advance.
pub type OnAdvance = Box<dyn Fn(&str, u64) + Sync>;

/// Progress that keeps the notes and can act when a phase passes a mark.
#[derive(Default)]
pub struct Recording {
    pub notes: Mutex<Vec<String>>,
    pub phases: Mutex<Vec<String>>,
    pub position: Mutex<(String, u64)>,
    pub on_advance: Option<OnAdvance>,
}

impl Recording {
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }
}

impl Progress for Recording {
    fn start(&self, label: &str, _total: u64, _unit: Unit) {
        self.phases.lock().unwrap().push(label.to_string());
        *self.position.lock().unwrap() = (label.to_string(), 0);
    }
    fn advance(&self, delta: u64) {
        let (label, pos) = {
            let mut p = self.position.lock().unwrap();
            p.1 += delta;
            p.clone()
        };
        if let Some(f) = &self.on_advance {
            f(&label, pos);
        }
    }
    fn set(&self, position: u64) {
        self.position.lock().unwrap().1 = position;
    }
    fn finish(&self) {}
    fn note(&self, message: &str) {
        self.notes.lock().unwrap().push(message.to_string());
    }
}

// ---------------------------------------------------------------------------
// Recording proxy

/// One request as the SDK sent it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub url: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// Form parameters of an EC2 Query request (`Action=...&...`).
    pub fn form(&self) -> HashMap<String, String> {
        parse_form(&String::from_utf8_lossy(&self.body))
    }
    pub fn action(&self) -> Option<String> {
        self.form().get("Action").cloned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or(&self.url)
    }
    /// Query parameters, decoded.
    pub fn query(&self) -> HashMap<String, String> {
        parse_form(self.url.split_once('?').map_or("", |(_, q)| q))
    }
}

/// A canned answer: status, content type, body.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Canned {
    /// An EC2 Query API answer.
    pub fn xml(body: impl Into<String>) -> Self {
        Canned {
            status: 200,
            headers: vec![("Content-Type".into(), "text/xml;charset=UTF-8".into())],
            body: body.into(),
        }
    }

    /// A REST-JSON error (EBS direct), as AWS sends it.
    pub fn json_error(status: u16, error_type: &str, message: &str) -> Self {
        Canned {
            status,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("x-amzn-ErrorType".into(), error_type.into()),
            ],
            body: format!(r#"{{"message":"{message}","Reason":"INVALID_BLOCK"}}"#),
        }
    }
}

type Matcher = Box<dyn Fn(&Recorded) -> bool + Send + Sync>;

/// A rule answers matching requests from its list, in order; the last answer repeats.
struct Rule {
    matches: Matcher,
    answers: Vec<Canned>,
    used: usize,
}

/// An HTTP proxy on 127.0.0.1 in front of moto: records every request, answers
/// the calls moto lacks from recorded AWS responses, forwards the rest.
/// A plain HTTP/1.1 server (thread per connection, keep-alive) small enough
/// to trust in a test; [`Recorder::serve`] makes one that answers everything itself.
pub struct Recorder {
    accept: Option<JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pub log: Arc<Mutex<Vec<Recorded>>>,
    rules: Arc<Mutex<Vec<Rule>>>,
    pub port: u16,
}

/// How a [`Recorder`] answers a request.
pub type Respond = Arc<dyn Fn(&Recorded) -> RawResponse + Send + Sync>;

impl Recorder {
    pub fn start(upstream_port: u16) -> Recorder {
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::new(Mutex::new(Vec::new()));
        let respond: Respond = {
            let rules = rules.clone();
            Arc::new(move |rec: &Recorded| {
                let canned = {
                    let mut rules = rules.lock().unwrap();
                    rules.iter_mut().find(|r| (r.matches)(rec)).map(|r| {
                        let answer = r.answers[r.used.min(r.answers.len() - 1)].clone();
                        r.used += 1;
                        answer
                    })
                };
                match canned {
                    Some(c) => RawResponse {
                        status: c.status,
                        headers: c.headers,
                        body: c.body.into_bytes(),
                    },
                    None => forward(upstream_port, rec).unwrap_or_else(|e| RawResponse {
                        status: 502,
                        headers: vec![],
                        body: format!("proxy: {e}").into_bytes(),
                    }),
                }
            })
        };
        let mut recorder = Recorder::serve(respond);
        recorder.rules = rules;
        recorder
    }

    /// A server that records every request and answers it with `respond`:
    /// the stand-in for an API that has no emulator.
    pub fn serve(respond: Respond) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let accept = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (log, respond) = (log.clone(), respond.clone());
                    std::thread::spawn(move || {
                        let _ = serve_connection(conn, &log, &*respond);
                    });
                }
            })
        };
        Recorder {
            accept: Some(accept),
            stop,
            log,
            rules: Arc::new(Mutex::new(Vec::new())),
            port,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Answers requests for which `matches` holds with `answers`, in order.
    pub fn answer(
        &self,
        matches: impl Fn(&Recorded) -> bool + Send + Sync + 'static,
        answers: Vec<Canned>,
    ) {
        self.rules.lock().unwrap().push(Rule {
            matches: Box::new(matches),
            answers,
            used: 0,
        });
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// EC2 Query requests with this `Action`.
    pub fn ec2_calls(&self, action: &str) -> Vec<HashMap<String, String>> {
        self.requests()
            .iter()
            .filter(|r| r.action().as_deref() == Some(action))
            .map(Recorded::form)
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One keep-alive connection: read a request, answer it, repeat until EOF.
fn serve_connection(
    conn: TcpStream,
    log: &Mutex<Vec<Recorded>>,
    respond: &(dyn Fn(&Recorded) -> RawResponse + Send + Sync),
) -> std::io::Result<()> {
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, url) = match (parts.next(), parts.next()) {
            (Some(m), Some(u)) => (m.to_string(), u.to_string()),
            _ => return Ok(()),
        };
        let headers: HashMap<String, String> = read_headers(&mut reader)?
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        if headers
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            read_chunked(&mut reader)?
        } else {
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body)?;
            body
        };
        let close = headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let rec = Recorded {
            method,
            url,
            headers,
            body,
        };
        log.lock().unwrap().push(rec.clone());
        let resp = respond(&rec);
        let mut head = format!("HTTP/1.1 {} X\r\n", resp.status);
        for (k, v) in &resp.headers {
            if !matches!(
                k.to_ascii_lowercase().as_str(),
                "content-length" | "transfer-encoding" | "connection"
            ) {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", resp.body.len()));
        writer.write_all(head.as_bytes())?;
        writer.write_all(&resp.body)?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

/// The header lines up to the blank line, as (name, value), trimmed.
fn read_headers(reader: &mut impl BufRead) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(headers);
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size)?;
        let n =
            usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if n == 0 {
            // Trailers, then the blank line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let mut chunk = vec![0u8; n + 2];
        reader.read_exact(&mut chunk)?;
        body.extend_from_slice(&chunk[..n]);
    }
}

/// EC2 Query `Action` matcher.
pub fn ec2_action(action: &'static str) -> impl Fn(&Recorded) -> bool + Send + Sync {
    move |r: &Recorded| r.action().as_deref() == Some(action)
}

pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

fn forward(port: u16, rec: &Recorded) -> std::io::Result<RawResponse> {
    let headers: Vec<(&str, &str)> = rec
        .headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "connection" | "content-length" | "expect" | "transfer-encoding"
            )
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    http_raw(port, &rec.method, &rec.url, &headers, &rec.body)
}

/// A minimal HTTP/1.1 exchange with `Connection: close`, enough for moto.
pub fn http_raw(
    port: u16,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<RawResponse> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {url} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers = read_headers(&mut reader)?;
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        body
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

pub fn parse_form(s: &str) -> HashMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
