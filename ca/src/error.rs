//! [`CaError`], the one error of every authority operation, and the variant that decides the
//! HTTP status the API answers with. Its own module so the authority, the state directory, the
//! store's callers and the API can all name it without importing each other.

use std::path::Path;

use tether_certs::issue::IssueError;

use crate::store::StoreError;

/// Why an authority operation failed. The variant decides the HTTP status the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The request is malformed (bad CSR, bad JSON, bad SPIFFE ID) → 400.
    #[error("{0}")]
    BadRequest(String),
    /// No valid credential (unknown/used/expired token, no client certificate) → 401.
    #[error("{0}")]
    Unauthorized(String),
    /// A credential that is not allowed (revoked, expired, not admin) → 403.
    #[error("{0}")]
    Forbidden(String),
    /// The thing named does not exist (unknown serial) → 404.
    #[error("{0}")]
    NotFound(String),
    /// The state directory is missing, incomplete or already initialized.
    #[error("{0}")]
    State(String),
    /// The database failed → 500.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed → 500.
    #[error("signing failed: {0}")]
    Sign(String),
    /// A worker thread running an operation died (a bug: it panicked) → 500. Nothing it did
    /// outside a committed transaction is kept.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<IssueError> for CaError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::MalformedCsr(_)
            | IssueError::BadCsrSignature
            | IssueError::UnsupportedKey(_)
            | IssueError::Identity(..) => CaError::BadRequest(e.to_string()),
            other => CaError::Sign(other.to_string()),
        }
    }
}

impl CaError {
    /// A file-system error on `path` in the state directory (or an output directory).
    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        CaError::State(format!("{}: {e}", path.display()))
    }

    /// Signing (or generating a key) failed.
    pub(crate) fn sign(e: impl std::fmt::Display) -> Self {
        CaError::Sign(e.to_string())
    }
}
