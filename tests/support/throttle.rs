//! A TCP proxy on 127.0.0.1 that slows what clients send to a real server.
//!
//! Tests that act in the middle of a transfer (a signal mid-upload) cannot
//! rely on the transfer being slow: on an idle machine 200 MiB reach a local
//! server in under two seconds, before the first progress line. The proxy lets
//! the first `free` bytes through at full speed, then paces the rest at `rate`
//! bytes a second, so the transfer is certain to be under way for as long as
//! the test needs.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Stops accepting on drop; open connections end when either side closes.
pub struct Throttle {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Throttle {
    /// Proxies `127.0.0.1:<port>` to `127.0.0.1:upstream`. Bytes sent by all
    /// clients together are counted: after `free` of them, each further
    /// chunk waits until the total is within `rate` bytes a second of the
    /// moment the limit began.
    pub fn start(upstream: u16, free: u64, rate: u64) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let limited_since = Arc::new(std::sync::OnceLock::<Instant>::new());
        let stopping = stop.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (client_in, server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (sent, since) = (sent.clone(), limited_since.clone());
                thread::spawn(move || {
                    pump(client_in, server_out, |n| {
                        let total = sent.fetch_add(n, Ordering::SeqCst) + n;
                        if total > free {
                            let start = *since.get_or_init(Instant::now);
                            let due = Duration::from_secs_f64((total - free) as f64 / rate as f64);
                            if let Some(wait) = due.checked_sub(start.elapsed()) {
                                thread::sleep(wait);
                            }
                        }
                    })
                });
                thread::spawn(move || pump(server, client, |_| {}));
            }
        });
        Throttle { port, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` in 64 KiB chunks, calling `pace` before each write.
fn pump(mut from: TcpStream, mut to: TcpStream, pace: impl Fn(u64)) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                pace(n as u64);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
