//! The auth directory (`--dir DIR`): the keys, the JWTs, the record of issued users and
//! revocations, and the server configuration. It is the whole state of operator mode.
//!
//! ```text
//! DIR/                       0700
//!   keys/*.nk                seeds, 0600: operator, billing, billing-signing, system, system-user
//!   operator.jwt             accounts/billing.jwt  accounts/system.jwt
//!   system-user.creds        0600: used by `auth revoke` to push account updates
//!   issued.jsonl             one line per issued user: public key, role, tenant, times (no seed)
//!   revocations.json         user public key -> unix time of revocation
//!   nats-operator.conf       `nats-server -c` starts from it
//!   jwt/  jetstream/         the server's resolver store and JetStream store
//! ```
//!
//! Seeds never leave DIR: the only seed ever printed is the new user's, inside its `.creds`.
//! One `auth` command at a time per DIR: `issued.jsonl` is appended line by line, but
//! `revocations.json` is rewritten whole.

use super::claims::{self, AccountSpec, IssuedUser};
use super::roles::Role;
use super::server_conf::ServerConf;
use crate::domain::catalog::TenantId;
use anyhow::{bail, Context};
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const OPERATOR_NAME: &str = "invoicer";
pub const ACCOUNT_NAME: &str = "billing";
pub const SYSTEM_ACCOUNT_NAME: &str = "SYS";
pub const CONF_FILE: &str = "nats-operator.conf";

const SECRET: u32 = 0o600;
const PUBLIC: u32 = 0o644;

/// The key pairs of operator mode, by file name under `keys/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Operator,
    Account,
    AccountSigning,
    System,
    SystemUser,
}

impl Key {
    const ALL: [Key; 5] = [
        Key::Operator,
        Key::Account,
        Key::AccountSigning,
        Key::System,
        Key::SystemUser,
    ];

    fn file(self) -> &'static str {
        match self {
            Key::Operator => "operator.nk",
            Key::Account => "billing.nk",
            Key::AccountSigning => "billing-signing.nk",
            Key::System => "system.nk",
            Key::SystemUser => "system-user.nk",
        }
    }

    fn generate(self) -> KeyPair {
        match self {
            Key::Operator => KeyPair::new_operator(),
            Key::Account | Key::AccountSigning | Key::System => KeyPair::new_account(),
            Key::SystemUser => KeyPair::new_user(),
        }
    }

    /// The first letter of the kind's public keys: a seed of another kind is refused.
    fn public_prefix(self) -> char {
        match self {
            Key::Operator => 'O',
            Key::Account | Key::AccountSigning | Key::System => 'A',
            Key::SystemUser => 'U',
        }
    }
}

/// One issued user, as recorded in `issued.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub user: String,
    pub role: String,
    #[serde(default)]
    pub tenant: Option<String>,
    pub issued_at: i64,
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    /// Key files created by this run (empty when every key already existed).
    pub created: Vec<&'static str>,
    pub operator: String,
    pub account: String,
    pub system_account: String,
    pub conf: PathBuf,
}

/// What `revoke_tenant` changed.
#[derive(Debug)]
pub struct Revocation {
    /// Users of the tenant revoked by this call (already revoked ones are not counted).
    pub newly_revoked: usize,
    /// All users of the tenant on record, revoked now or before.
    pub users: usize,
    /// The billing account's new JWT, to push to the running server.
    pub account_jwt: String,
}

/// An initialised auth directory with its keys loaded.
pub struct AuthDir {
    root: PathBuf,
    operator: KeyPair,
    account: KeyPair,
    signing: KeyPair,
    system: KeyPair,
    system_user: KeyPair,
}

impl AuthDir {
    /// Creates what is missing (directory, keys) and rewrites the JWTs and the server
    /// configuration from the keys and the recorded revocations. Existing keys are kept, so
    /// running it again changes no identity and invalidates no issued credential.
    pub fn init(dir: &Path) -> anyhow::Result<(AuthDir, InitReport)> {
        fs::create_dir_all(dir.join("keys"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let root = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        for private in [root.clone(), root.join("keys")] {
            fs::set_permissions(&private, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {}", private.display()))?;
        }
        let mut created = Vec::new();
        for key in Key::ALL {
            let path = root.join("keys").join(key.file());
            if !path.exists() {
                let seed = key.generate().seed().context("encoding a new seed")?;
                write_new(&path, &seed, SECRET)?;
                created.push(key.file());
            }
        }
        let dir = Self::load(root)?;
        dir.write_system_files()?;
        let account_jwt = dir.account_jwt(&dir.revocations()?)?;
        dir.write_account(&account_jwt)?;
        for sub in ["jwt", "jetstream"] {
            fs::create_dir_all(dir.root.join(sub))
                .with_context(|| format!("creating {}/{sub}", dir.root.display()))?;
        }
        let report = InitReport {
            created,
            operator: dir.operator.public_key(),
            account: dir.account.public_key(),
            system_account: dir.system.public_key(),
            conf: dir.conf_path(),
        };
        Ok((dir, report))
    }

    /// Opens a directory made by [`AuthDir::init`].
    pub fn open(dir: &Path) -> anyhow::Result<AuthDir> {
        if !dir.join("keys").join(Key::Operator.file()).exists() {
            bail!(
                "{} holds no operator key: run `invoicer auth init --dir {}` first",
                dir.display(),
                dir.display()
            );
        }
        let root = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        Self::load(root)
    }

    fn load(root: PathBuf) -> anyhow::Result<AuthDir> {
        let key = |k: Key| read_key(&root.join("keys").join(k.file()), k);
        Ok(AuthDir {
            operator: key(Key::Operator)?,
            account: key(Key::Account)?,
            signing: key(Key::AccountSigning)?,
            system: key(Key::System)?,
            system_user: key(Key::SystemUser)?,
            root,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn conf_path(&self) -> PathBuf {
        self.root.join(CONF_FILE)
    }

    pub fn system_creds_path(&self) -> PathBuf {
        self.root.join("system-user.creds")
    }

    /// The billing account's public key (the account every role's users belong to).
    pub fn account_public_key(&self) -> String {
        self.account.public_key()
    }

    /// Issues a user of `role`, expiring at `expires_at` (unix seconds) if given, and records
    /// its public key so that `revoke` can find it.
    pub fn issue(&self, role: &Role, expires_at: Option<i64>) -> anyhow::Result<IssuedUser> {
        let issued =
            claims::issue_user(&self.signing, &self.account.public_key(), role, expires_at)?;
        let record = IssuedRecord {
            user: issued.public_key.clone(),
            role: match role {
                Role::Tenant(_) => "tenant".into(),
                other => other.label(),
            },
            tenant: role.tenant().map(|t| t.to_string()),
            issued_at: chrono::Utc::now().timestamp(),
            expires_at,
        };
        let mut line = serde_json::to_string(&record)?;
        line.push('\n');
        let path = self.root.join("issued.jsonl");
        // One write of one line in append mode: concurrent issuers do not interleave lines.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(SECRET)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .with_context(|| format!("recording the issued user in {}", path.display()))?;
        Ok(issued)
    }

    /// Every issued user on record, oldest first.
    pub fn issued(&self) -> anyhow::Result<Vec<IssuedRecord>> {
        let path = self.root.join("issued.jsonl");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{} line {}", path.display(), i + 1))
            })
            .collect()
    }

    /// Revokes every user issued to `tenant` (as of `now`, unix seconds) and rewrites the
    /// billing account JWT and the server configuration. The caller pushes the returned JWT
    /// to the running server. Credentials issued to the tenant afterwards are new users and
    /// are not affected.
    pub fn revoke_tenant(&self, tenant: &TenantId, now: i64) -> anyhow::Result<Revocation> {
        let issued = self.issued()?;
        let users: Vec<&IssuedRecord> = issued
            .iter()
            .filter(|r| r.role == "tenant" && r.tenant.as_deref() == Some(tenant.as_str()))
            .collect();
        if users.is_empty() {
            bail!(
                "no credentials issued to tenant {tenant} are recorded in {}",
                self.root.display()
            );
        }
        let mut revocations = self.revocations()?;
        let mut newly_revoked = 0;
        for user in &users {
            if !revocations.contains_key(&user.user) {
                revocations.insert(user.user.clone(), now);
                newly_revoked += 1;
            }
        }
        // An expired JWT is refused anyway: dropping its entry keeps the account JWT small.
        let expired: Vec<&str> = issued
            .iter()
            .filter(|r| r.expires_at.is_some_and(|exp| exp < now))
            .map(|r| r.user.as_str())
            .collect();
        for user in expired {
            revocations.remove(user);
        }
        write_atomic(
            &self.root.join("revocations.json"),
            &serde_json::to_string_pretty(&revocations)?,
            SECRET,
        )?;
        let account_jwt = self.account_jwt(&revocations)?;
        self.write_account(&account_jwt)?;
        Ok(Revocation {
            newly_revoked,
            users: users.len(),
            account_jwt,
        })
    }

    fn revocations(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let path = self.root.join("revocations.json");
        match fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn account_jwt(&self, revocations: &BTreeMap<String, i64>) -> anyhow::Result<String> {
        claims::account_jwt(
            &self.operator,
            &self.account.public_key(),
            ACCOUNT_NAME,
            &AccountSpec {
                signing_keys: vec![self.signing.public_key()],
                jetstream: true,
                revocations: revocations.clone(),
            },
        )
    }

    fn operator_jwt(&self) -> anyhow::Result<String> {
        claims::operator_jwt(&self.operator, OPERATOR_NAME, &self.system.public_key())
    }

    fn system_account_jwt(&self) -> anyhow::Result<String> {
        claims::account_jwt(
            &self.operator,
            &self.system.public_key(),
            SYSTEM_ACCOUNT_NAME,
            &AccountSpec::default(),
        )
    }

    /// The operator and system account JWTs and the system user's credentials.
    fn write_system_files(&self) -> anyhow::Result<()> {
        fs::create_dir_all(self.root.join("accounts"))?;
        write_atomic(
            &self.root.join("operator.jwt"),
            &self.operator_jwt()?,
            PUBLIC,
        )?;
        write_atomic(
            &self.root.join("accounts/system.jwt"),
            &self.system_account_jwt()?,
            PUBLIC,
        )?;
        let system = self.system.public_key();
        let user_jwt = claims::user_jwt(
            &self.system,
            &system,
            &self.system_user.public_key(),
            "system",
            None,
            None,
        )?;
        let seed = self
            .system_user
            .seed()
            .context("encoding the system seed")?;
        write_atomic(
            &self.system_creds_path(),
            &claims::creds(&user_jwt, &seed),
            SECRET,
        )
    }

    /// The billing account's JWT, and the server configuration that preloads it.
    fn write_account(&self, account_jwt: &str) -> anyhow::Result<()> {
        write_atomic(&self.root.join("accounts/billing.jwt"), account_jwt, PUBLIC)?;
        let operator_jwt = fs::read_to_string(self.root.join("operator.jwt"))?;
        let system_jwt = fs::read_to_string(self.root.join("accounts/system.jwt"))?;
        let conf = ServerConf {
            operator_jwt: operator_jwt.trim(),
            system_account: &self.system.public_key(),
            resolver_dir: &self.root.join("jwt"),
            jetstream_dir: &self.root.join("jetstream"),
            accounts: &[
                (self.account.public_key(), account_jwt.to_string()),
                (self.system.public_key(), system_jwt.trim().to_string()),
            ],
        }
        .render()?;
        write_atomic(&self.conf_path(), &conf, PUBLIC)
    }
}

fn read_key(path: &Path, kind: Key) -> anyhow::Result<KeyPair> {
    let seed = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pair = KeyPair::from_seed(seed.trim())
        .with_context(|| format!("{} does not hold an nkey seed", path.display()))?;
    if !pair.public_key().starts_with(kind.public_prefix()) {
        bail!("{} holds a seed of the wrong kind", path.display());
    }
    // A seed readable by others is fixed rather than trusted as it is.
    fs::set_permissions(path, fs::Permissions::from_mode(SECRET))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(pair)
}

/// Creates `path` with `mode`, refusing to replace an existing file (a seed is never rewritten).
fn write_new(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| {
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// Replaces `path` whole (write a sibling, then rename), so a reader never sees half a file.
fn write_atomic(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_keeps_its_keys_and_writes_seeds_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("auth");
        let (first, report) = AuthDir::init(&dir).unwrap();
        assert_eq!(report.created.len(), 5);
        let (second, again) = AuthDir::init(&dir).unwrap();
        assert!(again.created.is_empty());
        assert_eq!(first.account_public_key(), second.account_public_key());
        assert_eq!(report.operator, again.operator);
        for key in Key::ALL {
            let mode = fs::metadata(dir.join("keys").join(key.file()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key:?}");
        }
        let creds_mode = fs::metadata(first.system_creds_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(creds_mode & 0o777, 0o600);
        // No seed is in a file others may read.
        let conf = fs::read_to_string(first.conf_path()).unwrap();
        for key in Key::ALL {
            let seed = fs::read_to_string(dir.join("keys").join(key.file())).unwrap();
            assert!(!conf.contains(seed.trim()));
        }
    }

    #[test]
    fn a_revocation_is_kept_across_init_and_names_only_the_tenants_users() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, _) = AuthDir::init(tmp.path()).unwrap();
        let acme = TenantId::parse("acme").unwrap();
        let a1 = dir.issue(&Role::Tenant(acme.clone()), None).unwrap();
        let a2 = dir.issue(&Role::Tenant(acme.clone()), None).unwrap();
        let other = dir
            .issue(&Role::Tenant(TenantId::parse("globex").unwrap()), None)
            .unwrap();
        let admin = dir.issue(&Role::Admin, None).unwrap();
        let revoked = dir.revoke_tenant(&acme, 1_000).unwrap();
        assert_eq!((revoked.newly_revoked, revoked.users), (2, 2));
        let again = dir.revoke_tenant(&acme, 2_000).unwrap();
        assert_eq!((again.newly_revoked, again.users), (0, 2));
        AuthDir::init(tmp.path()).unwrap();
        let kept = dir.revocations().unwrap();
        assert_eq!(
            kept,
            BTreeMap::from([(a1.public_key, 1_000), (a2.public_key, 1_000)])
        );
        assert!(!kept.contains_key(&other.public_key) && !kept.contains_key(&admin.public_key));
        let unknown = TenantId::parse("initech").unwrap();
        let err = dir.revoke_tenant(&unknown, 3_000).unwrap_err();
        assert!(err
            .to_string()
            .contains("no credentials issued to tenant initech"));
    }

    #[test]
    fn open_requires_init() {
        let tmp = tempfile::tempdir().unwrap();
        let err = AuthDir::open(tmp.path()).err().unwrap();
        assert!(err.to_string().contains("auth init"), "{err}");
    }
}
