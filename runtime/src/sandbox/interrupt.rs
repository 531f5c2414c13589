//! SIGINT/SIGTERM to pgimg become a flag the running command watches, so the build tears down.
//!
//! The handler only stores to an atomic (all a signal handler may safely do).
//! [`ChrootTarget`](super::ChrootTarget) polls the flag while a command runs;
//! when it is set, it kills the command's PID namespace with SIGKILL and
//! returns `CommandError::Interrupted`, and the caller unwinds through its
//! normal teardown. The handler is installed with `SA_RESETHAND`: a second
//! Ctrl-C kills pgimg outright, which is still safe because its mounts live in
//! a private namespace and its loop devices auto-clear.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// Set by SIGINT or SIGTERM once [`install_handler`] ran.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The signal that interrupted the build (0 while none did), for the exit message.
static SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT and SIGTERM handler that sets [`INTERRUPTED`].
pub fn install_handler() -> Result<(), nix::Error> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESETHAND,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to atomics, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }?;
    }
    Ok(())
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The signal that set the flag, if any.
pub fn signal() -> Option<Signal> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        n => Signal::try_from(n).ok(),
    }
}
