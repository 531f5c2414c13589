//! The verify channel: a small shell agent and its unit, written into the
//! throw-away overlay only, serving one virtio-serial port; and the host's
//! side of that port.
//!
//! Why this shape: systemd credentials (`-smbios type=11`) and `systemd.run=`
//! need systemd 250+ and Ubuntu 22.04 has 249; a login on the serial console
//! needs a password or an autologin change; an SSH check needs keys and a
//! network. A unit and a POSIX shell script in `/etc` work on every systemd
//! image, are read by systemd at boot with no `daemon-reload`, and exist only
//! in the overlay. The script finds its port through sysfs (no udev rule).
//!
//! Protocol, one line per message. Host → guest: `ID BASE64(shell command)`.
//! Guest → host: `READY` once, then per request `BEGIN ID`, the command's
//! output (stdout and stderr) as base64 lines, `END ID STATUS`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::disk::BootDisk;
use super::qemu::AGENT_PORT;
use super::VmError;

/// Unit name of the injected agent.
pub const UNIT: &str = "pgimg-verify-agent.service";
const SCRIPT_PATH: &str = "/etc/pgimg-verify-agent.sh";

fn script() -> String {
    format!(
        r#"#!/bin/sh
# pgimg verify agent: injected into a throw-away overlay by `pgimg verify`;
# runs the host's commands and sends back their output and exit status.
port=
while [ -z "$port" ]; do
    for d in /sys/class/virtio-ports/*; do
        [ "$(cat "$d/name" 2>/dev/null)" = "{AGENT_PORT}" ] && port=/dev/${{d##*/}}
    done
    [ -n "$port" ] || sleep 1
done
exec 3<>"$port"
echo READY >&3
while read -r id cmd <&3; do
    printf '%s' "$cmd" | base64 -d >/run/pgimg-verify.cmd
    sh /run/pgimg-verify.cmd </dev/null >/run/pgimg-verify.out 2>&1
    status=$?
    {{ echo "BEGIN $id"; base64 /run/pgimg-verify.out; echo "END $id $status"; }} >&3
done
"#
    )
}

fn unit() -> String {
    format!(
        "[Unit]\n\
         Description=pgimg verify agent (throw-away overlay only)\n\
         \n\
         [Service]\n\
         ExecStart=/bin/sh {SCRIPT_PATH}\n\
         Restart=on-failure\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// Writes the agent and its unit (enabled for multi-user.target) into the
/// root file system of `disk`, which must be the raw view of an overlay.
pub fn inject(disk: &BootDisk, scratch: &Path) -> Result<(), VmError> {
    let script_file = scratch.join("agent.sh");
    let unit_file = scratch.join("agent.service");
    let write = |p: &Path, text: String, mode: u32| -> Result<(), VmError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(p, text)
            .and_then(|_| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| VmError::Tool {
                tool: "agent",
                cause: format!("writing {}: {e}", p.display()),
            })
    };
    write(&script_file, script(), 0o755)?;
    write(&unit_file, unit(), 0o644)?;
    let wants = "/etc/systemd/system/multi-user.target.wants";
    let mut requests = Vec::new();
    if !disk.exists(wants) {
        requests.push(format!("mkdir {wants}"));
    }
    requests.push(format!("write {} {SCRIPT_PATH}", script_file.display()));
    requests.push(format!(
        "write {} /etc/systemd/system/{UNIT}",
        unit_file.display()
    ));
    requests.push(format!("symlink {wants}/{UNIT} /etc/systemd/system/{UNIT}"));
    for request in requests {
        let done = disk.debugfs_request(true, &request, |l| l.starts_with("Allocated inode"))?;
        if let Err(complaint) = done {
            let complaint = if complaint.is_empty() {
                "failed"
            } else {
                &complaint
            };
            return Err(VmError::Tool {
                tool: "debugfs",
                cause: format!("injecting the verify agent ({request}): {complaint}"),
            });
        }
    }
    Ok(())
}

/// What one command in the guest produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// stdout and stderr, interleaved as written.
    pub out: String,
    pub status: i64,
}

enum Line {
    Text(String),
    Closed,
}

/// The host's end of the agent's port.
pub struct Agent {
    writer: UnixStream,
    lines: mpsc::Receiver<Line>,
    next_id: u64,
}

impl Agent {
    /// Connects to QEMU's socket (QEMU creates it at start; retried until
    /// `deadline`).
    pub fn connect(socket: &Path, deadline: Instant) -> Result<Agent, VmError> {
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(VmError::Agent(format!(
                        "connecting to {}: {e}",
                        socket.display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let reader = stream
            .try_clone()
            .map_err(|e| VmError::Agent(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Line::Text(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(Line::Closed);
        });
        Ok(Agent {
            writer: stream,
            lines: rx,
            next_id: 1,
        })
    }

    fn next_line(&self, deadline: Instant) -> Result<Option<String>, VmError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(Line::Text(l)) => Ok(Some(l)),
            Ok(Line::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => Err(VmError::Agent(
                "the guest closed the channel (powered off or crashed)".to_string(),
            )),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
        }
    }

    /// Waits for the agent's `READY`; `Ok(false)` when `deadline` passed first.
    /// `alive` is polled so a machine that exited ends the wait at once.
    pub fn wait_ready(
        &self,
        deadline: Instant,
        mut alive: impl FnMut() -> bool,
    ) -> Result<bool, VmError> {
        loop {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if !alive() {
                return Err(VmError::Agent(
                    "the machine exited before the agent started".into(),
                ));
            }
            let step = (Instant::now() + Duration::from_secs(1)).min(deadline);
            if let Some(line) = self.next_line(step)? {
                if line.trim() == "READY" {
                    return Ok(true);
                }
            }
        }
    }

    /// Runs `command` with `/bin/sh` in the guest, waiting until `deadline`.
    pub fn run(&mut self, command: &str, deadline: Instant) -> Result<Output, VmError> {
        use base64::Engine as _;
        let id = self.next_id;
        self.next_id += 1;
        let encoded = base64::engine::general_purpose::STANDARD.encode(command);
        writeln!(self.writer, "{id} {encoded}").map_err(|e| VmError::Agent(e.to_string()))?;
        let mut body = String::new();
        let mut started = false;
        loop {
            let line = self.next_line(deadline)?.ok_or_else(|| {
                VmError::Agent(format!("no answer to `{command}` before the deadline"))
            })?;
            let line = line.trim_end();
            if line == format!("BEGIN {id}") {
                started = true;
            } else if let Some(rest) = line.strip_prefix(&format!("END {id} ")) {
                let status = rest.trim().parse().unwrap_or(-1);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(body.as_bytes())
                    .map_err(|e| VmError::Agent(format!("garbled output of `{command}`: {e}")))?;
                return Ok(Output {
                    out: String::from_utf8_lossy(&bytes).into_owned(),
                    status,
                });
            } else if started {
                body.push_str(line.trim());
            }
        }
    }

    /// Sends a command without waiting for its answer (e.g. `systemctl poweroff`).
    pub fn send(&mut self, command: &str) -> Result<(), VmError> {
        use base64::Engine as _;
        let id = self.next_id;
        self.next_id += 1;
        let encoded = base64::engine::general_purpose::STANDARD.encode(command);
        writeln!(self.writer, "{id} {encoded}").map_err(|e| VmError::Agent(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// The agent runs on dash, busybox sh and bash alike: no bashisms.
    #[test]
    fn agent_script_parses_with_posix_sh() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), script()).unwrap();
        let status = Command::new("sh")
            .arg("-n")
            .arg(file.path())
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn unit_runs_the_script_and_is_wanted_by_multi_user() {
        let u = unit();
        assert!(u.contains(&format!("ExecStart=/bin/sh {SCRIPT_PATH}")));
        assert!(u.contains("WantedBy=multi-user.target"));
    }
}
