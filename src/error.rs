//! The error classes that matter at the edges: each maps to exactly one reply code and one
//! JetStream ack kind (see `bus::ack`).

use crate::catalog::CatalogError;
use crate::quote::QuoteError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input can never succeed: reply `bad_request`, terminate the message.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// A legal request that conflicts with the current state (an illegal transition).
    #[error("{0}")]
    Conflict(String),
    /// Worth retrying: the database is unreachable, or a serialization failure or deadlock.
    #[error("transient: {0}")]
    Transient(String),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The contract's error code (CONTRACT.md section 6).
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::NotFound(_) => "not_found",
            Error::Conflict(_) => "conflict",
            Error::Transient(_) | Error::Internal(_) => "internal",
        }
    }

    /// The services API status code for `Nats-Service-Error-Code`.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::Transient(_) | Error::Internal(_) => 500,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient(_))
    }

    pub fn bad(msg: impl std::fmt::Display) -> Self {
        Error::BadRequest(msg.to_string())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::Database(db) => match db.code().as_deref() {
                // serialization_failure, deadlock_detected, lock timeouts, admin shutdown,
                // too many connections, cannot connect now.
                Some("40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300") => {
                    Error::Transient(e.to_string())
                }
                Some(c) if c.starts_with("08") => Error::Transient(e.to_string()),
                // Data exceptions: input the database cannot store (NUL in text, out-of-range values).
                Some(c) if c.starts_with("22") => Error::BadRequest(db.message().to_string()),
                _ => Error::Internal(e.to_string()),
            },
            E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) => {
                Error::Transient(e.to_string())
            }
            E::Protocol(_) => Error::Transient(e.to_string()),
            E::RowNotFound => Error::NotFound("not found".into()),
            _ => Error::Internal(e.to_string()),
        }
    }
}

impl From<CatalogError> for Error {
    fn from(e: CatalogError) -> Self {
        Error::BadRequest(e.to_string())
    }
}

impl From<QuoteError> for Error {
    fn from(e: QuoteError) -> Self {
        Error::BadRequest(e.to_string())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::BadRequest(format!("invalid JSON payload: {e}"))
    }
}
