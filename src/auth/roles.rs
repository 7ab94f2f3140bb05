//! Who may do what on NATS: the one table of role permissions and inbox prefixes.
//!
//! `nats.conf` (static users) and the JWTs that `invoicer auth creds` issues (operator mode) must
//! grant exactly the same subjects. The JWTs are built from [`Role::permissions`]; the test
//! `tests/auth_roles.rs` parses `nats.conf` and compares every user's allow lists with this
//! table, so a subject added to one and not the other fails the build's tests.
//!
//! Inbox prefixes (CONTRACT.md section 7, v2): a role replies on `_INBOX_<role>`, a tenant on
//! `_INBOX_tenant_<tenant_id>`. Tenant ids are `[A-Za-z0-9_-]`, so no tenant prefix can equal or
//! contain a role's (`_INBOX_admin` vs `_INBOX_tenant_admin`), whatever the tenant is called.

use crate::domain::catalog::TenantId;

/// A NATS user's role. Tenants carry their id: their subjects are their own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// `invoicer run` (and `invoicer migrate`).
    Worker,
    /// The platform admin: the CLI, `invoicer demo`.
    Admin,
    /// `invoicer scheduler`: publishes the month-end rollup request.
    Scheduler,
    /// The usage producer.
    Metering,
    /// One tenant: its own invoices, quotes and inbox, nothing else.
    Tenant(TenantId),
}

/// The allow lists of one user. Everything not listed is refused by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// Publish once to the reply subject of each request received (the server's default
    /// `allow_responses: true`: one reply within two minutes).
    pub allow_responses: bool,
}

/// The prefix every tenant's inbox starts with (`_INBOX_tenant_<tenant_id>`).
pub const TENANT_INBOX_PREFIX: &str = "_INBOX_tenant_";

impl Role {
    /// The role of a non-tenant user called `name`, if it is one.
    pub fn fixed(name: &str) -> Option<Role> {
        match name {
            "worker" => Some(Role::Worker),
            "admin" => Some(Role::Admin),
            "scheduler" => Some(Role::Scheduler),
            "metering" => Some(Role::Metering),
            _ => None,
        }
    }

    /// A short human-readable name, used as the user JWT's name: `admin`, `tenant acme`.
    pub fn label(&self) -> String {
        match self {
            Role::Worker => "worker".into(),
            Role::Admin => "admin".into(),
            Role::Scheduler => "scheduler".into(),
            Role::Metering => "metering".into(),
            Role::Tenant(t) => format!("tenant {t}"),
        }
    }

    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Role::Tenant(t) => Some(t),
            _ => None,
        }
    }

    /// The prefix of this user's reply inboxes (`NATS_INBOX_PREFIX`).
    pub fn inbox_prefix(&self) -> String {
        match self {
            Role::Tenant(t) => format!("{TENANT_INBOX_PREFIX}{t}"),
            _ => format!("_INBOX_{}", self.label()),
        }
    }

    /// Exactly what this role needs (CONTRACT.md sections 6 and 7). `nats.conf` explains each
    /// line; keep the two in step (`tests/auth_roles.rs` checks).
    pub fn permissions(&self) -> Permissions {
        let inbox = format!("{}.>", self.inbox_prefix());
        let (publish, subscribe, allow_responses): (Vec<&str>, Vec<&str>, bool) = match self {
            Role::Worker => (
                vec![
                    // Startup: ensure the three streams and the worker's two durables.
                    "$JS.API.STREAM.INFO.BILLING_ROLLUPS",
                    "$JS.API.STREAM.INFO.BILLING_EVENTS",
                    "$JS.API.STREAM.INFO.METERING_USAGE",
                    "$JS.API.STREAM.CREATE.BILLING_ROLLUPS",
                    "$JS.API.STREAM.CREATE.BILLING_EVENTS",
                    "$JS.API.STREAM.CREATE.METERING_USAGE",
                    // Adds a subject a newer version publishes to an older BILLING_EVENTS.
                    "$JS.API.STREAM.UPDATE.BILLING_EVENTS",
                    "$JS.API.CONSUMER.INFO.BILLING_ROLLUPS.invoicer-rollups",
                    "$JS.API.CONSUMER.INFO.METERING_USAGE.invoicer-usage",
                    "$JS.API.CONSUMER.CREATE.BILLING_ROLLUPS.invoicer-rollups",
                    "$JS.API.CONSUMER.CREATE.METERING_USAGE.invoicer-usage",
                    // Pulls and acks of those two consumers.
                    "$JS.API.CONSUMER.MSG.NEXT.BILLING_ROLLUPS.invoicer-rollups",
                    "$JS.API.CONSUMER.MSG.NEXT.METERING_USAGE.invoicer-usage",
                    "$JS.ACK.BILLING_ROLLUPS.invoicer-rollups.>",
                    "$JS.ACK.METERING_USAGE.invoicer-usage.>",
                    // The rollup work queue, shared by the worker replicas alone.
                    "$JS.API.STREAM.INFO.BILLING_WORK",
                    "$JS.API.STREAM.CREATE.BILLING_WORK",
                    "$JS.API.CONSUMER.INFO.BILLING_WORK.invoicer-work",
                    "$JS.API.CONSUMER.CREATE.BILLING_WORK.invoicer-work",
                    "$JS.API.CONSUMER.MSG.NEXT.BILLING_WORK.invoicer-work",
                    "$JS.ACK.BILLING_WORK.invoicer-work.>",
                    "billing.internal.rollup.work",
                    // The outbox relay's events (exactly the subjects it publishes) and the
                    // rollup progress. Replies go out under `allow_responses` alone, and only
                    // to an inbox of the scope that asked (`may_answer`).
                    "billing.invoice.issued",
                    "billing.invoice.paid",
                    "billing.invoice.voided",
                    "billing.invoice.drafted",
                    "billing.rollup.completed",
                    "billing.rollup.rejected",
                    "billing.usage.late",
                    "billing.usage.rejected",
                    "billing.rollup.progress",
                ],
                vec![
                    // The micro service's endpoints and discovery.
                    "billing.admin.>",
                    "billing.tenant.*.invoices.>",
                    "billing.quote",
                    "$SRV.>",
                    &inbox,
                ],
                true,
            ),
            Role::Scheduler => (
                vec![
                    "billing.rollup.requested",
                    // Its state: the key-value bucket invoicer-scheduler, key `state` only.
                    "$JS.API.STREAM.INFO.KV_invoicer-scheduler",
                    "$JS.API.STREAM.CREATE.KV_invoicer-scheduler",
                    "$JS.API.DIRECT.GET.KV_invoicer-scheduler.$KV.invoicer-scheduler.state",
                    "$KV.invoicer-scheduler.state",
                ],
                vec![&inbox],
                false,
            ),
            Role::Metering => (vec!["metering.usage.recorded"], vec![&inbox], false),
            Role::Admin => (
                vec![
                    // Not `billing.tenant.>`: the worker answers a tenant's subject only on
                    // that tenant's inbox, so the admin uses its own subjects.
                    "billing.admin.>",
                    "billing.quote",
                    "billing.rollup.requested",
                    "metering.usage.recorded",
                    "$SRV.>",
                    // JetStream, read only.
                    "$JS.API.INFO",
                    "$JS.API.STREAM.NAMES",
                    "$JS.API.STREAM.LIST",
                    "$JS.API.STREAM.INFO.BILLING_ROLLUPS",
                    "$JS.API.STREAM.INFO.BILLING_EVENTS",
                    "$JS.API.STREAM.INFO.METERING_USAGE",
                    "$JS.API.STREAM.MSG.GET.BILLING_ROLLUPS",
                    "$JS.API.STREAM.MSG.GET.BILLING_EVENTS",
                    "$JS.API.STREAM.MSG.GET.METERING_USAGE",
                    "$JS.API.CONSUMER.NAMES.BILLING_ROLLUPS",
                    "$JS.API.CONSUMER.NAMES.METERING_USAGE",
                    "$JS.API.CONSUMER.LIST.BILLING_ROLLUPS",
                    "$JS.API.CONSUMER.LIST.METERING_USAGE",
                    "$JS.API.CONSUMER.INFO.BILLING_ROLLUPS.*",
                    "$JS.API.CONSUMER.INFO.METERING_USAGE.*",
                ],
                vec![
                    // Events, deliberately not `billing.>` (that would cover the requests).
                    "billing.invoice.>",
                    "billing.rollup.>",
                    "billing.usage.>",
                    &inbox,
                ],
                false,
            ),
            Role::Tenant(t) => {
                let own = format!("billing.tenant.{t}.>");
                return Permissions {
                    publish: vec![own, "billing.quote".into()],
                    subscribe: vec![inbox],
                    allow_responses: false,
                };
            }
        };
        Permissions {
            publish: publish.into_iter().map(String::from).collect(),
            subscribe: subscribe.into_iter().map(String::from).collect(),
            allow_responses,
        }
    }
}

/// The default inbox prefix of a `nats.conf` user: a role's name gives that role's prefix, any
/// other name is taken as a tenant id. `None` when the name cannot be a tenant id (then the
/// client keeps the library default and `NATS_INBOX_PREFIX` must be set).
pub fn inbox_prefix_for_user(user: &str) -> Option<String> {
    match Role::fixed(user) {
        Some(role) => Some(role.inbox_prefix()),
        None => TenantId::parse(user)
            .ok()
            .map(|t| Role::Tenant(t).inbox_prefix()),
    }
}

/// The inbox prefix a set of permissions allows: the one subscribe entry `_INBOX<...>.>`.
/// Used to derive `NATS_INBOX_PREFIX` from a `.creds` file, whatever issued it.
pub fn inbox_prefix_allowed(subscribe: &[String]) -> Option<String> {
    let mut inboxes = subscribe
        .iter()
        .filter_map(|s| s.strip_suffix(".>"))
        .filter(|p| p.starts_with("_INBOX") && !p.contains(['*', '>', '.']));
    match (inboxes.next(), inboxes.next()) {
        (Some(only), None) => Some(only.to_string()),
        _ => None,
    }
}

/// The library default inbox prefix, which CONTRACT.md section 7 lets any scope reply on.
const DEFAULT_INBOX: &str = "_INBOX";

/// Whether the worker may answer a message received on `asked_on` by publishing to `reply`
/// (CONTRACT.md section 7, v3): only on an inbox of the scope that asked, that is the client
/// default `_INBOX.` or `_INBOX_tenant_<id>.` for a tenant's subjects, `_INBOX_admin.` for the
/// admin's, and any `_INBOX` prefix for the quote and service discovery, which any user may
/// ask. Anything else (a stream's subject, the JetStream API, a key-value bucket, another
/// scope's inbox) is a caller trying to make the worker publish where it must not.
pub fn may_answer(asked_on: &str, reply: &str) -> bool {
    let tokens: Vec<&str> = reply.split('.').collect();
    let literal = tokens.len() >= 2
        && tokens
            .iter()
            .all(|t| !t.is_empty() && *t != "*" && *t != ">" && !t.contains(char::is_whitespace));
    if !literal {
        return false;
    }
    let inbox = tokens[0];
    if inbox == DEFAULT_INBOX {
        return true;
    }
    let mut asked = asked_on.split('.');
    match (asked.next(), asked.next(), asked.next()) {
        (Some("billing"), Some("tenant"), Some(tenant)) => {
            inbox.strip_prefix(TENANT_INBOX_PREFIX) == Some(tenant)
        }
        (Some("billing"), Some("admin"), _) => inbox == Role::Admin.inbox_prefix(),
        _ => inbox.starts_with("_INBOX_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> Role {
        Role::Tenant(TenantId::parse(id).unwrap())
    }

    #[test]
    fn every_role_subscribes_to_its_own_inbox_and_no_other() {
        for role in [
            Role::Worker,
            Role::Admin,
            Role::Scheduler,
            Role::Metering,
            tenant("acme"),
        ] {
            let perms = role.permissions();
            assert_eq!(
                inbox_prefix_allowed(&perms.subscribe),
                Some(role.inbox_prefix()),
                "{role:?}"
            );
            assert!(!perms.subscribe.iter().any(|s| s.starts_with("_INBOX.")));
        }
    }

    #[test]
    fn a_tenant_named_like_a_role_gets_a_different_inbox() {
        for name in ["admin", "worker", "scheduler", "metering", "tenant_x"] {
            let t = tenant(name);
            let prefix = t.inbox_prefix();
            assert_eq!(prefix, format!("_INBOX_tenant_{name}"));
            for role in [Role::Worker, Role::Admin, Role::Scheduler, Role::Metering] {
                let theirs = role.inbox_prefix();
                assert_ne!(prefix, theirs);
                // Neither may subscribe to the other's replies, even with a wildcard.
                assert!(!t
                    .permissions()
                    .subscribe
                    .iter()
                    .any(|s| s.starts_with(&theirs)));
            }
        }
    }

    #[test]
    fn a_tenant_publishes_only_on_its_own_subjects_and_the_quote() {
        let perms = tenant("acme").permissions();
        assert_eq!(perms.publish, ["billing.tenant.acme.>", "billing.quote"]);
        assert_eq!(perms.subscribe, ["_INBOX_tenant_acme.>"]);
        assert!(!perms.allow_responses);
    }

    #[test]
    fn default_prefixes_for_nats_conf_users() {
        assert_eq!(
            inbox_prefix_for_user("worker").as_deref(),
            Some("_INBOX_worker")
        );
        assert_eq!(
            inbox_prefix_for_user("acme").as_deref(),
            Some("_INBOX_tenant_acme")
        );
        assert_eq!(inbox_prefix_for_user("not a tenant"), None);
    }

    #[test]
    fn the_allowed_inbox_must_be_unambiguous() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            inbox_prefix_allowed(&s(&["_INBOX.>"])).as_deref(),
            Some("_INBOX")
        );
        assert_eq!(
            inbox_prefix_allowed(&s(&["_INBOX_a.>", "_INBOX_b.>"])),
            None
        );
        assert_eq!(
            inbox_prefix_allowed(&s(&["billing.>", "_INBOX_a.>"])).as_deref(),
            Some("_INBOX_a")
        );
    }

    #[test]
    fn answers_go_only_to_an_inbox_of_the_scope_that_asked() {
        let tenant = "billing.tenant.acme.invoices.list";
        let admin = "billing.admin.invoices.void";
        let anyone = ["billing.quote", "$SRV.PING", "$SRV.INFO.invoicer"];
        let system = [
            "$JS.API.STREAM.PURGE.BILLING_EVENTS",
            "$KV.invoicer-scheduler.state",
            "billing.rollup.requested",
            "billing.invoice.paid",
            "_INBOX",
            "_INBOX.",
            "_INBOX.*",
            "_INBOX.>",
            "_INBOX..x",
            "_INBOX.a b",
            "_INBOXES.x",
            "",
        ];
        for asked_on in [tenant, admin].iter().chain(&anyone) {
            assert!(may_answer(asked_on, "_INBOX.abc.1"), "{asked_on}");
            for reply in system {
                assert!(!may_answer(asked_on, reply), "{asked_on} -> {reply:?}");
            }
        }
        assert!(may_answer(tenant, "_INBOX_tenant_acme.x.1"));
        for other in [
            "_INBOX_tenant_globex.x",
            "_INBOX_admin.x",
            "_INBOX_tenant_acmee.x",
        ] {
            assert!(!may_answer(tenant, other), "{other}");
        }
        assert!(may_answer(admin, "_INBOX_admin.x.1"));
        assert!(!may_answer(admin, "_INBOX_tenant_acme.x"));
        assert!(!may_answer(admin, "_INBOX_worker.x"));
        for asked_on in anyone {
            assert!(may_answer(asked_on, "_INBOX_tenant_acme.x"));
            assert!(may_answer(asked_on, "_INBOX_admin.x"));
        }
    }
}
