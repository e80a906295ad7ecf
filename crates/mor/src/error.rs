//! Errors of the `mor` crate.

/// Everything that can go wrong in `mor`; each message says what, where, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Dimensions of matrices or blocks disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A block that must be stable has a mode with `|λ| ≥ 1`.
    #[error("unstable system: {0}")]
    Unstable(String),
    /// Input data (JSON/safetensors) is malformed.
    #[error("invalid input {path}: {msg}")]
    Format { path: String, msg: String },
    /// An argument is out of its valid range (e.g. a reduced order larger than the full order).
    #[error("invalid argument: {0}")]
    Argument(String),
    /// A dense decomposition (faer) failed.
    #[error("linear algebra failure: {0}")]
    LinAlg(String),
    /// File system error, with the path.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
