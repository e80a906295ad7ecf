//! Errors of the `s5` crate.

/// Everything that can go wrong in `s5`; each message says what, where, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from candle (tensor ops, shapes, dtypes).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A checkpoint file is missing, truncated or does not match the model.
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },
    /// A configuration value is invalid.
    #[error("config: {0}")]
    Config(String),
    /// An error from the `mor` crate (export/import of reduced systems).
    #[error(transparent)]
    Mor(#[from] mor::Error),
    /// An error from the data crate.
    #[error(transparent)]
    Data(#[from] lra::Error),
    /// File system error, with the path.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Training diverged (loss or gradient not finite); the last good checkpoint is kept.
    #[error("training diverged at step {step}: {msg}")]
    Diverged { step: usize, msg: String },
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
