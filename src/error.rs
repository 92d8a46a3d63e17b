//! Typed library errors. The binary adds context and maps them to a non-zero exit status.

use std::path::PathBuf;

/// Everything that can go wrong inside the library.
#[derive(Debug, thiserror::Error)]
pub enum QwmError {
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// A bundle (manifest + graphs) is malformed or inconsistent.
    #[error("bundle {path}: {msg}")]
    Bundle {
        /// The bundle folder or file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A backend failed to load or run a graph.
    #[error("backend {backend}, graph {graph}: {msg}")]
    Backend {
        /// Which engine.
        backend: &'static str,
        /// Which graph (file name or role).
        graph: String,
        /// What failed.
        msg: String,
    },
    /// Bad flags or arguments.
    #[error("{0}")]
    Usage(String),
    /// A call out of order (a controller asked to act before it has a goal).
    #[error("{0}")]
    State(String),
    /// A numerical fault (NaN/Inf where numbers are required).
    #[error("numerical fault: {0}")]
    Numeric(String),
    /// A memory limit would be or was exceeded.
    #[error("memory limit: {0}")]
    Memory(String),
}

impl QwmError {
    /// Wrap an io error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        QwmError::Io {
            path: path.into(),
            cause: source,
        }
    }
    /// A bundle error.
    pub fn bundle(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        QwmError::Bundle {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// Library result type.
pub type Result<T, E = QwmError> = std::result::Result<T, E>;
