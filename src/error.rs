//! The error classes that matter at the edges: each maps to exactly one reply code and one
//! JetStream ack kind (see `bus::ack`).

use crate::domain::catalog::CatalogError;
use crate::domain::quote::QuoteError;

/// The error a transient or internal failure came from, kept whole (a `sqlx::Error` can still
/// be asked for its SQLSTATE), not flattened into a string.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    #[error(transparent)]
    Transient(Cause),
    #[error(transparent)]
    Internal(Cause),
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

    /// A failure worth retrying, with its cause (an error value, or a message).
    pub fn transient(cause: impl Into<Cause>) -> Self {
        Error::Transient(cause.into())
    }

    /// A failure that is nobody's input and not worth retrying at once, with its cause.
    pub fn internal(cause: impl Into<Cause>) -> Self {
        Error::Internal(cause.into())
    }
}

/// Classifies a database error once, keeping it as the cause. A data exception (SQLSTATE class
/// 22) is not the caller's fault: input is checked at the edge against everything PostgreSQL
/// refuses, so one that still happens (a sum overflowing, say) is internal, never a reason to
/// refuse a request or drop a message.
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let transient = match &e {
            E::Database(db) => match db.code().as_deref() {
                // serialization_failure, deadlock_detected, lock timeouts, admin shutdown,
                // too many connections, cannot connect now.
                Some("40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300") => true,
                Some(c) => c.starts_with("08"),
                None => false,
            },
            E::Io(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Tls(_) => true,
            E::Protocol(_) => true,
            E::RowNotFound => return Error::NotFound("not found".into()),
            _ => false,
        };
        if transient {
            Error::Transient(Box::new(e))
        } else {
            Error::Internal(Box::new(e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    fn cause(e: &Error) -> &Cause {
        match e {
            Error::Transient(c) | Error::Internal(c) => c,
            other => panic!("expected a failure with a cause, got {other:?}"),
        }
    }

    #[test]
    fn a_database_failure_keeps_its_cause_and_its_class() {
        let lost = Error::from(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        )));
        assert!(lost.is_transient());
        assert!(matches!(
            cause(&lost).downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(_))
        ));
        // The chain reaches the I/O error itself, not a string made of it.
        let io = lost
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("the I/O error is the source");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionReset);

        let bug = Error::from(sqlx::Error::ColumnNotFound("number".into()));
        assert!(!bug.is_transient());
        assert_eq!(bug.code(), "internal");
        assert!(matches!(
            cause(&bug).downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::ColumnNotFound(c)) if c == "number"
        ));

        assert_eq!(Error::from(sqlx::Error::RowNotFound).code(), "not_found");
        assert!(Error::from(sqlx::Error::PoolTimedOut).is_transient());
    }
}
