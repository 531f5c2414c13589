//! The error a primitive returns; the Rhai boundary adds file:line:col and the name.

use crate::fetch::FetchError;
use crate::root::FsError;
use crate::target::CommandError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `impl From<$module_error> for Error` as [`Error::Invalid`]: for the
/// errors of a primitive's own checks (arguments, the image's state), which
/// carry their whole message and no cause.
macro_rules! invalid_from {
    ($($module_error:ty),+) => {$(
        impl From<$module_error> for $crate::error::Error {
            fn from(e: $module_error) -> Self {
                $crate::error::Error::Invalid(e.to_string())
            }
        }
    )+};
}
pub(crate) use invalid_from;
