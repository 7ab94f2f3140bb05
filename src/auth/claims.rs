//! NATS JWTs (operator, accounts, users) and `.creds` files, built with `nats-jwt-rs` (the
//! claim format of nats-io/jwt v2, which nats-server 2.9 reads) and signed with nkeys.
//!
//! Trust chain: the operator signs the accounts (billing, system); the billing account's
//! signing key signs its users, each JWT naming the account as `issuer_account`, so the
//! account's identity key can stay untouched and a signing key can be rotated.

use super::roles::{Permissions, Role};
use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nats_jwt_rs::account::{Account, JetStreamLimits, OperatorLimits};
use nats_jwt_rs::operator::Operator;
use nats_jwt_rs::types::{
    Permission, Permissions as JwtPermissions, ResponsePermission, SigningKey,
};
use nats_jwt_rs::user::User;
use nkeys::KeyPair;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// What nats-server grants with `allow_responses: true` in a config file: one reply within two
/// minutes. Issued users get the same, so both modes behave alike.
const RESPONSE_TTL: Duration = Duration::from_secs(120);

/// The operator's self-signed JWT, naming the system account.
pub fn operator_jwt(
    operator: &KeyPair,
    name: &str,
    system_account: &str,
) -> anyhow::Result<String> {
    let mut claims = Operator::new_claims(name.into(), operator.public_key());
    claims.nats.system_account = Some(system_account.into());
    claims.encode(operator).context("signing the operator JWT")
}

/// What an account JWT carries besides its name.
#[derive(Debug, Clone, Default)]
pub struct AccountSpec {
    /// Keys (besides the account's own) that may sign its users.
    pub signing_keys: Vec<String>,
    /// JetStream without limits (the billing account); off for the system account.
    pub jetstream: bool,
    /// User public key → unix time: the server refuses that user's JWTs issued at or before it.
    pub revocations: BTreeMap<String, i64>,
}

/// An account JWT signed by the operator.
pub fn account_jwt(
    operator: &KeyPair,
    account: &str,
    name: &str,
    spec: &AccountSpec,
) -> anyhow::Result<String> {
    let mut claims = Account::new_claims(name.into(), account.into());
    if !spec.signing_keys.is_empty() {
        claims.nats.signing_keys = Some(
            spec.signing_keys
                .iter()
                .map(|key| SigningKey {
                    key: key.clone(),
                    scope: None,
                })
                .collect(),
        );
    }
    if spec.jetstream {
        // nats-server enables JetStream for an account whose memory or disk limit is not 0;
        // -1 is "no limit" (the server's own limits still apply).
        let limits = claims
            .nats
            .limits
            .get_or_insert_with(OperatorLimits::default);
        limits.jetstream = Some(JetStreamLimits {
            memory_storage: Some(-1),
            disk_storage: Some(-1),
            streams: Some(-1),
            consumer: Some(-1),
            ..Default::default()
        });
    }
    if !spec.revocations.is_empty() {
        let revocations = spec
            .revocations
            .iter()
            .map(|(user, at)| (user.clone(), u64::try_from(*at).unwrap_or(0)))
            .collect();
        claims.nats.revocations = Some(revocations);
    }
    claims
        .encode(operator)
        .with_context(|| format!("signing the JWT of account {name}"))
}

/// A user JWT of `account`, signed by `signer` (the account or one of its signing keys), with
/// `permissions` (none: everything, as for the system account's user) and an optional expiry
/// (unix seconds).
pub fn user_jwt(
    signer: &KeyPair,
    account: &str,
    user: &str,
    name: &str,
    permissions: Option<&Permissions>,
    expires_at: Option<i64>,
) -> anyhow::Result<String> {
    let mut claims = User::new_claims(name.into(), user.into());
    if signer.public_key() != account {
        claims.nats.issuer_account = Some(account.into());
    }
    if let Some(p) = permissions {
        claims.nats.permissions.permissions = JwtPermissions {
            publish: Permission {
                allow: p.publish.clone(),
                deny: vec![],
            },
            subscribe: Permission {
                allow: p.subscribe.clone(),
                deny: vec![],
            },
            resp: p.allow_responses.then_some(ResponsePermission {
                max_messages: 1,
                ttl: RESPONSE_TTL,
            }),
        };
    }
    claims.exp = expires_at;
    claims
        .encode(signer)
        .with_context(|| format!("signing the JWT of user {name}"))
}

/// A new user of `role` in `account`: its public key and its `.creds` file.
pub struct IssuedUser {
    pub public_key: String,
    pub creds: String,
}

pub fn issue_user(
    signer: &KeyPair,
    account: &str,
    role: &Role,
    expires_at: Option<i64>,
) -> anyhow::Result<IssuedUser> {
    let user = KeyPair::new_user();
    let jwt = user_jwt(
        signer,
        account,
        &user.public_key(),
        &role.label(),
        Some(&role.permissions()),
        expires_at,
    )?;
    let seed = user.seed().context("reading the new user's seed")?;
    Ok(IssuedUser {
        public_key: user.public_key(),
        creds: creds(&jwt, &seed),
    })
}

const JWT_BEGIN: &str = "-----BEGIN NATS USER JWT-----";
const JWT_END: &str = "------END NATS USER JWT------";

/// A `.creds` file in the layout nats-server's tools and every NATS client read.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "{JWT_BEGIN}\n{jwt}\n{JWT_END}\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The user JWT inside a `.creds` file.
pub fn creds_jwt(creds: &str) -> Option<&str> {
    let after = creds.split_once(JWT_BEGIN)?.1;
    let jwt = after.split_once(JWT_END)?.0.trim();
    (!jwt.is_empty()).then_some(jwt)
}

/// The claims of a JWT as JSON, once its signature is checked against its issuer (`iss`).
///
/// Read as plain JSON rather than `nats_jwt_rs::Claims<User>`: that type cannot read back a
/// `resp` permission (its duration goes through `u128`, which serde's flattening refuses).
pub fn decode(jwt: &str) -> anyhow::Result<Value> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        bail!("a JWT has three parts separated by dots");
    };
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)
        .context("the JWT's claims are not JSON")?;
    let issuer = claims["iss"]
        .as_str()
        .ok_or_else(|| anyhow!("the JWT names no issuer"))?;
    let signature = URL_SAFE_NO_PAD.decode(signature)?;
    KeyPair::from_public_key(issuer)
        .and_then(|key| key.verify(format!("{header}.{payload}").as_bytes(), &signature))
        .map_err(|e| anyhow!("the JWT's signature does not verify: {e}"))?;
    Ok(claims)
}

/// What a `.creds` file lets its user subscribe to.
pub fn creds_subscribe_allow(creds: &str) -> anyhow::Result<Vec<String>> {
    let jwt = creds_jwt(creds).ok_or_else(|| anyhow!("no user JWT in the credentials"))?;
    let claims = decode(jwt)?;
    Ok(claims["nats"]["sub"]["allow"]
        .as_array()
        .map(|allow| {
            allow
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::TenantId;
    use serde_json::json;

    #[test]
    fn a_tenant_user_jwt_carries_its_permissions_issuer_account_and_expiry() {
        let account = KeyPair::new_account();
        let signing = KeyPair::new_account();
        let role = Role::Tenant(TenantId::parse("acme").unwrap());
        let issued =
            issue_user(&signing, &account.public_key(), &role, Some(2_000_000_000)).unwrap();
        let jwt = creds_jwt(&issued.creds).unwrap();
        let claims = decode(jwt).unwrap();
        assert_eq!(claims["sub"], issued.public_key.as_str());
        assert_eq!(claims["iss"], signing.public_key().as_str());
        assert_eq!(claims["exp"], 2_000_000_000);
        assert_eq!(claims["name"], "tenant acme");
        let nats = &claims["nats"];
        assert_eq!(nats["type"], "user");
        assert_eq!(nats["version"], 2);
        assert_eq!(nats["issuer_account"], account.public_key().as_str());
        assert_eq!(nats["pub"]["allow"], json!(role.permissions().publish));
        assert_eq!(nats["sub"]["allow"], json!(["_INBOX_tenant_acme.>"]));
        assert!(nats.get("resp").is_none(), "{nats}");
        assert_eq!(
            creds_subscribe_allow(&issued.creds).unwrap(),
            ["_INBOX_tenant_acme.>"]
        );
        // The seed in the file is the user's.
        let seed = issued.creds.lines().find(|l| l.starts_with("SU")).unwrap();
        assert_eq!(
            KeyPair::from_seed(seed).unwrap().public_key(),
            issued.public_key
        );
    }

    #[test]
    fn a_tampered_jwt_is_rejected() {
        let signing = KeyPair::new_account();
        let jwt = user_jwt(
            &signing,
            &signing.public_key(),
            &KeyPair::new_user().public_key(),
            "x",
            None,
            None,
        )
        .unwrap();
        let (head, rest) = jwt.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        let mut bytes = payload.as_bytes().to_vec();
        bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
        let forged = format!("{head}.{}.{sig}", String::from_utf8(bytes).unwrap());
        assert!(decode(&forged).is_err());
        assert!(decode(&jwt).is_ok());
    }

    #[test]
    fn the_worker_may_answer_requests_once_each() {
        let signing = KeyPair::new_account();
        let issued = issue_user(&signing, "ACCOUNT", &Role::Worker, None).unwrap();
        let claims = decode(creds_jwt(&issued.creds).unwrap()).unwrap();
        // Go's time.Duration: nanoseconds.
        assert_eq!(
            claims["nats"]["resp"],
            json!({"max": 1, "ttl": RESPONSE_TTL.as_nanos() as u64})
        );
        assert!(claims.get("exp").is_none());
    }
}
