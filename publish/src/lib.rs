//! Publishing built images: S3-compatible object stores and AWS AMIs.
//!
//! The CLI is synchronous; every entry point here builds its own tokio runtime,
//! runs to completion and returns a serde-serializable outcome. Credentials come
//! from the standard AWS chain (environment, profile, web identity, ...) and are
//! never printed: errors carry the operation, the object and the service's
//! message, never a request.

#[cfg(feature = "ami")]
pub mod ami;
pub mod conn;
pub mod hash;
pub mod progress;
mod retry;
mod rt;
pub mod s3;
pub mod summary;

pub use conn::Connection;
pub use progress::{Bar, Progress, Quiet};
