//! The failures every publish target shares — options that cannot work, a
//! file, a service call, a signal — wrapped by each target's `Error`.

use std::path::{Path, PathBuf};

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::retry::sdk_message;

/// What goes wrong the same way in S3, AMI and GCE publishing (only AMI and
/// GCE wait, so only they time out). Each target's `Error` has a transparent
/// `Common` variant, so these read exactly as the target's own.
#[derive(Debug, thiserror::Error)]
pub enum Common {
    /// The options cannot work (an empty bucket, a bad name, a part size out
    /// of range, ...).
    #[error("invalid option: {0}")]
    Invalid(String),
    /// Reading the image or writing a file (the tarball, the step summary)
    /// failed; an image that shrank while being read shows here.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A call failed: operation, what it was about, the service's message.
    #[error("{op} {target}: {message}")]
    Api {
        op: &'static str,
        target: String,
        message: String,
    },
    /// SIGINT or SIGTERM arrived; what had been started was cleaned up.
    #[error("interrupted by {signal}")]
    Interrupted { signal: &'static str },
    /// A bounded wait (an import task, a snapshot, AMIs, a GCE image or
    /// operation) ran out.
    #[error("gave up after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
}

/// Builds the [`Common`] failures as any error that wraps them.
pub(crate) trait CommonError: From<Common> {
    /// [`Common::Invalid`].
    fn invalid(message: String) -> Self {
        Common::Invalid(message).into()
    }

    /// [`Common::Io`] about `path`.
    fn io(path: &Path, source: std::io::Error) -> Self {
        Common::Io {
            path: path.to_path_buf(),
            source,
        }
        .into()
    }

    /// [`Common::Api`] with the service's message.
    fn api_message(op: &'static str, target: impl Into<String>, message: String) -> Self {
        Common::Api {
            op,
            target: target.into(),
            message,
        }
        .into()
    }

    /// [`Common::Api`] for a failed SDK call, its message from [`sdk_message`].
    fn api<E>(op: &'static str, target: impl Into<String>, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
    {
        Self::api_message(op, target, sdk_message(err))
    }

    /// [`Common::Interrupted`] by `signal`.
    fn interrupted(signal: &'static str) -> Self {
        Common::Interrupted { signal }.into()
    }
}

impl<T: From<Common>> CommonError for T {}

/// What a caller needs of any target's error to report it: the options the
/// target refused (a usage error rather than a failure) and whether a
/// signal cut the work short (exit 130).
pub trait TargetError: std::error::Error + Send + Sync + 'static {
    /// The shared failure this is, if it is one.
    fn common(&self) -> Option<&Common>;

    /// SIGINT or SIGTERM stopped the work, also when a cleanup then failed.
    fn interrupted(&self) -> bool;

    /// The target's refusal of the options, when that is the failure.
    fn refused_options(&self) -> Option<&str> {
        match self.common() {
            Some(Common::Invalid(m)) => Some(m),
            _ => None,
        }
    }
}

/// Implements [`TargetError`] for a target's `Error`, which has a
/// transparent `Common` variant and an inherent `is_interrupted`.
macro_rules! target_error {
    ($error:ty) => {
        impl $crate::error::TargetError for $error {
            fn common(&self) -> Option<&$crate::error::Common> {
                match self {
                    Self::Common(c) => Some(c),
                    _ => None,
                }
            }

            fn interrupted(&self) -> bool {
                self.is_interrupted()
            }
        }
    };
}
pub(crate) use target_error;
