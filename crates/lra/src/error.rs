//! Errors of the `lra` crate.

/// Everything that can go wrong in `lra`; each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// File system error, with the path.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
