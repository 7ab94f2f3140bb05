//! Exit codes, so a script or an orchestrator can tell from `$?` what happened:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (`health`: the worker is ready) |
//! | 1 | an error: bad input, a service unreachable, no answer (`health`: not ready) |
//! | 2 | the command line itself is wrong (clap's usage errors, e.g. a bad `--cron`) |
//! | 3 | `rollup --wait`: the rollup completed, but some tenants failed |
//! | 4 | `rollup --wait`: the request was rejected |

/// An outcome that ends a command with a particular exit code.
#[derive(Debug, thiserror::Error)]
pub enum Exit {
    #[error("the rollup completed, but {0} tenant(s) failed")]
    TenantsFailed(usize),
    #[error("the rollup request was rejected: {0}")]
    Rejected(String),
    #[error("{0}")]
    NotReady(String),
}

impl Exit {
    pub fn code(&self) -> u8 {
        match self {
            Exit::NotReady(_) => 1,
            Exit::TenantsFailed(_) => 3,
            Exit::Rejected(_) => 4,
        }
    }
}

/// The exit code for a command's error: its [`Exit`] code, or 1.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error.downcast_ref::<Exit>().map_or(1, Exit::code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_code_and_other_errors_are_1() {
        let code = |e: anyhow::Error| exit_code(&e);
        assert_eq!(code(Exit::TenantsFailed(2).into()), 3);
        assert_eq!(code(Exit::Rejected("bad".into()).into()), 4);
        assert_eq!(code(Exit::NotReady("down".into()).into()), 1);
        assert_eq!(code(anyhow::anyhow!("connection refused")), 1);
        // A context added on the way up keeps the code.
        let wrapped = anyhow::Error::from(Exit::Rejected("bad".into())).context("rollup");
        assert_eq!(code(wrapped), 4);
    }
}
