//! The nats-server configuration for operator mode (`DIR/nats-operator.conf`).

use anyhow::bail;
use std::path::Path;

/// What the configuration names: the trust chain, where the server keeps its JWTs and streams,
/// and the accounts it starts with.
pub struct ServerConf<'a> {
    pub operator_jwt: &'a str,
    pub system_account: &'a str,
    /// The full resolver's directory: accounts pushed at run time are stored there.
    pub resolver_dir: &'a Path,
    pub jetstream_dir: &'a Path,
    /// (account public key, account JWT), written as `resolver_preload`.
    pub accounts: &'a [(String, String)],
}

fn quoted(path: &Path) -> anyhow::Result<String> {
    let Some(s) = path.to_str() else {
        bail!("{} is not valid UTF-8", path.display());
    };
    // The config format has escapes, but a path that needs them is a mistake worth stopping.
    if s.contains(['"', '\\', '\n', '$']) {
        bail!("{s:?}: use a directory whose path has no quotes, backslashes, newlines or '$'");
    }
    Ok(format!("\"{s}\""))
}

impl ServerConf<'_> {
    pub fn render(&self) -> anyhow::Result<String> {
        let mut preload = String::new();
        for (key, jwt) in self.accounts {
            preload.push_str(&format!("  {key}: \"{jwt}\"\n"));
        }
        Ok(format!(
            "# nats-server configuration for invoicer in operator (JWT) mode, written by\n\
             # `invoicer auth init`. Start it with `nats-server -c <this file>` (`-a` and `-p`\n\
             # override the address and port; the JetStream store is set below, so do not pass\n\
             # `-sd`: the server refuses a second one). Re-running `invoicer auth init` rewrites\n\
             # this file from the keys it keeps; `invoicer auth revoke` rewrites the preloaded\n\
             # billing account and pushes it to the running server.\n\
             #\n\
             # No users are listed here: each client presents a user JWT (its `.creds` file,\n\
             # from `invoicer auth creds`) signed by the billing account's signing key, with\n\
             # exactly its role's permissions.\n\
             \n\
             port: 4222\n\
             \n\
             jetstream {{\n  store_dir: {jetstream}\n}}\n\
             \n\
             # The operator: trusted to sign accounts. Its seed stays in the auth directory.\n\
             operator: \"{operator}\"\n\
             system_account: {system}\n\
             \n\
             # The full resolver stores every account JWT in `dir` and accepts updates at run\n\
             # time (`$SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE` from the system account), so a\n\
             # revocation takes effect without a restart.\n\
             resolver {{\n  type: full\n  dir: {resolver}\n  allow_delete: false\n  interval: \"2m\"\n}}\n\
             \n\
             # The accounts the server starts with; an update with a newer JWT supersedes them.\n\
             resolver_preload {{\n{preload}}}\n",
            jetstream = quoted(self.jetstream_dir)?,
            operator = self.operator_jwt,
            system = self.system_account,
            resolver = quoted(self.resolver_dir)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_would_need_escaping_are_refused() {
        for bad in ["/tmp/a\"b", "/tmp/$HOME", "/tmp/a\\b"] {
            let conf = ServerConf {
                operator_jwt: "eyJ",
                system_account: "A",
                resolver_dir: Path::new(bad),
                jetstream_dir: Path::new("/tmp/js"),
                accounts: &[],
            };
            assert!(conf.render().is_err(), "{bad}");
        }
    }
}
