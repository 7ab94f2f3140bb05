//! Operator mode for the tests: an auth directory made by `invoicer auth init` in a temporary
//! directory, a private nats-server started from its `nats-operator.conf`, and issued users.

use super::NatsServer;
use invoicer::auth::{AuthDir, Role};
use invoicer::catalog::TenantId;
use std::path::PathBuf;

pub struct Operator {
    pub auth: AuthDir,
    tmp: tempfile::TempDir,
}

impl Operator {
    pub fn init() -> Operator {
        let tmp = tempfile::tempdir().unwrap();
        let (auth, _) = AuthDir::init(&tmp.path().join("auth")).expect("auth init");
        Operator { auth, tmp }
    }

    /// A private server on a free port, started from the generated configuration: JetStream
    /// and resolver stores in the (temporary) auth directory, the log kept for
    /// [`NatsServer::log`].
    pub fn start_server(&self) -> NatsServer {
        NatsServer::start_with_own_store(&self.auth.conf_path())
    }

    /// The `.creds` of a new user of `role`, without expiry.
    pub fn creds(&self, role: &Role) -> String {
        self.auth
            .issue(role, None)
            .expect("issue credentials")
            .creds
    }

    /// As [`Operator::creds`], written to a file (for `NATS_CREDS`).
    pub fn creds_file(&self, role: &Role) -> PathBuf {
        let path = self
            .tmp
            .path()
            .join(format!("{}.creds", role.label().replace(' ', "-")));
        std::fs::write(&path, self.creds(role)).unwrap();
        path
    }
}

/// The role of a user called `who`: a fixed role's name, or a tenant id.
pub fn role(who: &str) -> Role {
    Role::fixed(who).unwrap_or_else(|| Role::Tenant(TenantId::parse(who).unwrap()))
}
