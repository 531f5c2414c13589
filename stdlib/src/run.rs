//! The escape hatch: `run(cmd, #{ env, cwd, stdin, timeout })` runs a command inside the image.

use std::collections::BTreeMap;
use std::time::Duration;

use rhai::Array;
use serde::Deserialize;

use crate::api::{options, string_list};
use crate::ctx::{Ctx, Loc};
use crate::error::{Error, Result};
use crate::register::Str;
use crate::rhai_fns;
use crate::target::Command;

/// How long any command a primitive runs may take unless told otherwise:
/// long enough for a cold Go or PostgreSQL extension build, short enough that
/// a hung `apt-get` does not hold a CI runner until its own limit.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

/// A command with the default timeout; every primitive builds its commands here.
pub fn command<I, S>(argv: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    Command {
        timeout: Some(DEFAULT_TIMEOUT),
        ..Command::new(argv)
    }
}

/// Options of `run`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOpts {
    /// Added to the command's environment.
    pub env: Option<BTreeMap<String, String>>,
    /// Working directory inside the image (absolute).
    pub cwd: Option<String>,
    /// Text fed to the command's standard input.
    pub stdin: Option<String>,
    /// Seconds before the command is killed (default 7200).
    pub timeout: Option<i64>,
}

/// What to run: an argv, or a script for `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Argv(Vec<String>),
    Shell(String),
}

/// Builds the command `run` hands to the target.
pub fn build(cmd: Cmd, opts: RunOpts) -> Result<Command> {
    let argv = match cmd {
        Cmd::Argv(argv) if argv.is_empty() => {
            return Err(Error::invalid("the command is an empty array"))
        }
        Cmd::Argv(argv) => argv,
        Cmd::Shell(script) if script.trim().is_empty() => {
            return Err(Error::invalid("the command is empty"))
        }
        Cmd::Shell(script) => vec!["/bin/sh".into(), "-c".into(), script],
    };
    let mut c = command(argv);
    for (k, v) in opts.env.unwrap_or_default() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(Error::invalid(format!("env: `{k}` is not a variable name")));
        }
        c = c.env(&k, v);
    }
    if let Some(cwd) = opts.cwd {
        c = c.cwd(crate::files::image_path(&cwd)?);
    }
    c.stdin = opts.stdin.map(String::into_bytes);
    if let Some(t) = opts.timeout {
        let secs = u64::try_from(t).ok().filter(|s| *s > 0).ok_or_else(|| {
            Error::invalid(format!("timeout: {t} is not a positive number of seconds"))
        })?;
        c.timeout = Some(Duration::from_secs(secs));
    }
    Ok(c)
}

/// Runs `cmd` inside the image; returns its stdout. A non-zero exit is an
/// error carrying the exit status and the stderr tail (from the target).
pub fn run(ctx: &Ctx, loc: &Loc, cmd: Cmd, opts: RunOpts) -> Result<String> {
    let out = ctx.run(loc, build(cmd, opts)?)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

rhai_fns! { pub(crate) fn register;
    /// Runs `script` with `/bin/sh -c` inside the image; returns its stdout.
    /// Options: `env` (map), `cwd`, `stdin` (text), `timeout` (seconds, default 7200).
    /// A non-zero exit is an error with the exit code and the end of stderr.
    action run(script: Str, [opts]) |c, loc| run(c, loc, Cmd::Shell(script.into()), options(opts)?);
    /// Runs the program `argv[0]` with arguments `argv[1..]` inside the image (no shell); returns its stdout.
    /// Options: `env` (map), `cwd`, `stdin` (text), `timeout` (seconds, default 7200).
    /// A non-zero exit is an error with the exit code and the end of stderr.
    action run(argv: Array, [opts]) |c, loc| run(c, loc, Cmd::Argv(string_list(&argv.into(), "cmd")?), options(opts)?);
}

/// A target for tests of primitives that read command output: a fake root
/// whose commands are answered by a closure (which may also change the root,
/// as the real command would) instead of only being recorded.
#[cfg(test)]
pub(crate) mod scripted {
    use std::sync::Mutex;

    use crate::fetch::Fetcher;
    use crate::root::{FsError, ImageRoot};
    use crate::target::{Command, CommandError, Facts, Output, Target};
    use crate::FakeTarget;

    type Respond = dyn Fn(&ImageRoot, &Command) -> Result<Output, CommandError> + Send + Sync;

    pub struct Scripted {
        pub fake: FakeTarget,
        respond: Box<Respond>,
        seen: Mutex<Vec<Command>>,
    }

    impl Scripted {
        pub fn new(
            respond: impl Fn(&ImageRoot, &Command) -> Result<Output, CommandError>
                + Send
                + Sync
                + 'static,
        ) -> Self {
            Scripted {
                fake: FakeTarget::ubuntu(),
                respond: Box::new(respond),
                seen: Mutex::default(),
            }
        }

        pub fn commands(&self) -> Vec<Command> {
            self.seen.lock().unwrap().clone()
        }
    }

    /// Output with this stdout.
    pub fn stdout(s: &str) -> Output {
        Output {
            stdout: s.as_bytes().to_vec(),
            stderr_tail: String::new(),
        }
    }

    /// `install -D -m MODE SRC DEST` as coreutils does it, failing on a missing SRC.
    pub fn install(root: &ImageRoot, cmd: &Command) -> Result<Output, CommandError> {
        let [_, _, _, mode, src, dest] = &cmd.argv[..] else {
            panic!("unexpected {cmd}");
        };
        let Ok(bytes) = root.read(src) else {
            return Err(CommandError::Failed {
                command: cmd.to_string(),
                status: "exit status: 1".into(),
                stderr_tail: format!("install: cannot stat '{src}': No such file or directory"),
            });
        };
        let mode = u32::from_str_radix(mode, 8).unwrap();
        root.write(dest, &bytes, crate::root::Attrs::mode(mode))
            .unwrap();
        Ok(Output::default())
    }

    impl Target for Scripted {
        fn root(&self) -> &ImageRoot {
            self.fake.root()
        }
        fn run(&self, cmd: &Command) -> Result<Output, CommandError> {
            self.seen.lock().unwrap().push(cmd.clone());
            (self.respond)(self.fake.root(), cmd)
        }
        fn fetcher(&self) -> &dyn Fetcher {
            self.fake.fetcher()
        }
        fn facts(&self) -> &Facts {
            self.fake.facts()
        }
        fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), FsError> {
            self.fake.chown(path, uid, gid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scripted::Scripted;
    use super::*;
    use crate::target::{CommandError, Output};
    use crate::FakeTarget;
    use std::sync::Arc;

    fn eval(c: &Ctx, script: &str) -> Result<String, String> {
        let mut engine = rhai::Engine::new();
        crate::register(&mut engine, c);
        engine.eval::<String>(script).map_err(|e| match *e {
            rhai::EvalAltResult::ErrorRuntime(d, _) => {
                d.cast::<crate::api::PrimitiveFailure>().message
            }
            other => other.to_string(),
        })
    }

    #[test]
    fn argv_and_shell_forms_are_recorded() {
        let t = Arc::new(FakeTarget::ubuntu());
        let c = Ctx::new(t.clone());
        eval(&c, r#"run(["update-ca-certificates", "--fresh"])"#).unwrap();
        eval(
            &c,
            "\nrun(\"echo $HOME | tee /x\", #{ env: #{ HOME: \"/root\" }, cwd: \"/tmp\", stdin: \"in\", timeout: 60 })",
        )
        .unwrap();
        let cmds = t.commands();
        assert_eq!(cmds[0].argv, ["update-ca-certificates", "--fresh"]);
        assert_eq!(cmds[0].timeout, Some(DEFAULT_TIMEOUT));
        assert_eq!(cmds[0].label, "<recipe>:1:1");
        assert_eq!(
            cmds[1].to_string(),
            "cd /tmp && HOME=/root /bin/sh -c 'echo $HOME | tee /x'"
        );
        assert_eq!(cmds[1].stdin.as_deref(), Some(&b"in"[..]));
        assert_eq!(cmds[1].timeout, Some(Duration::from_secs(60)));
        assert_eq!(cmds[1].label, "<recipe>:2:1");
        let j = c.journal.lock().unwrap();
        assert_eq!(
            j.actions
                .iter()
                .map(|a| a.primitive.as_str())
                .collect::<Vec<_>>(),
            ["run", "run"]
        );
    }

    #[test]
    fn bad_commands_and_options() {
        let c = Ctx::new(Arc::new(FakeTarget::ubuntu()));
        let cases = [
            ("run([])", "run: the command is an empty array"),
            ("run(\"  \")", "run: the command is empty"),
            ("run([\"ls\", 1])", "run: cmd: expected strings"),
            (
                "run(\"ls\", #{ cwd: \"tmp\" })",
                "`tmp` must be an absolute path",
            ),
            (
                "run(\"ls\", #{ timeout: 0 })",
                "timeout: 0 is not a positive number",
            ),
            ("run(\"ls\", #{ envv: #{} })", "unknown field `envv`"),
        ];
        for (script, want) in cases {
            let e = eval(&c, script).unwrap_err();
            assert!(e.contains(want), "{script}: {e}");
        }
    }

    #[test]
    fn stdout_is_returned_and_failures_carry_status_and_stderr() {
        let c = Ctx::new(Arc::new(Scripted::new(|_, cmd| {
            if cmd.argv[0] == "true" {
                return Ok(Output {
                    stdout: b"hello\n".to_vec(),
                    stderr_tail: String::new(),
                });
            }
            Err(CommandError::Failed {
                command: cmd.to_string(),
                status: "exit status: 3".into(),
                stderr_tail: "E: it broke".into(),
            })
        })));
        assert_eq!(eval(&c, r#"run(["true"])"#).unwrap(), "hello\n");
        let e = eval(&c, r#"run("exit 3")"#).unwrap_err();
        assert_eq!(e, "<recipe>:1:1: run: `/bin/sh -c 'exit 3'` exited with exit status: 3; stderr:\nE: it broke");
    }
}
