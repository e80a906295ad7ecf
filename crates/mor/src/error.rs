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

/// Formats an error and its chain of causes on one line, `outer: cause: …`, skipping a cause whose
/// text the line already holds (error messages here embed their source, e.g. `{path}: {source}`,
/// so a plain `{:#}` would print the operating-system reason twice).
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_keeps_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = Error::Io {
            path: "/x.json".into(),
            source: io,
        };
        assert_eq!(one_line(&e), "/x.json: No such file");
        let outer = anyhow::Error::new(e).context("reading the system");
        assert_eq!(
            one_line(outer.as_ref()),
            "reading the system: /x.json: No such file"
        );
    }
}
