//! Publishing built images (S3-compatible object stores, AWS AMIs, GCE images) and pruning old ones.
//!
//! The CLI is synchronous; every entry point here builds its own tokio runtime,
//! runs to completion and returns a serde-serializable outcome. Credentials come
//! from the standard AWS chain (environment, profile, web identity, ...) and are
//! never printed: errors carry the operation, the object and the service's
//! message, never a request.

#[cfg(feature = "ami")]
pub mod ami;
pub mod conn;
pub mod error;
#[cfg(feature = "gce")]
pub mod gce;
pub mod hash;
mod holes;
pub mod progress;
pub mod prune;
mod retry;
mod rt;
pub mod s3;
pub mod summary;

pub use conn::Connection;
pub use progress::{Bar, Progress, Quiet};
