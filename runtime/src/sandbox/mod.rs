//! The sandbox a build runs in: a private mount namespace, the image's mounts, commands
//! pivoted into the image in namespaces of their own with reduced capabilities
//! (`exec`), borrowed paths given back, and the image's first-boot cleanup.
//!
//! Order of use in `pgimg run`/`pgimg shell`:
//! 1. [`namespace::enter_private_mount_namespace`] first thing in `main`, before any thread;
//!    [`interrupt::install_handler`] next;
//! 2. the image is attached and mounted (`image/`), then [`ChrootTarget::setup`] on its root;
//! 3. the recipe runs against the target;
//! 4. [`finalize::finalize`], then [`ChrootTarget::teardown`], then the image is unmounted.

mod apt_archives;
pub mod chroot;
mod exec;
pub mod finalize;
pub mod interrupt;
pub mod mounts;
pub mod namespace;

pub use chroot::{ChrootTarget, LineSink, SandboxOptions, SetupError, Stream};
pub use finalize::{finalize, FinalizeOptions, FinalizeReport};
pub use mounts::{Mount, MountError, MountStack};
