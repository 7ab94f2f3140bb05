//! The request-reply surface (CONTRACT.md sections 3, 5 and 6) against the real worker: every
//! endpoint of `Endpoint::ALL` over NATS, on a private nats-server and database per test.
//!
//! Every request here must get a reply: `call_raw` fails after 10s without one, so a handler
//! that panics, hangs or forgets to answer fails the test loudly instead of passing quietly.

mod common;

use common::{
    load_seed_catalog, publish_usage, rollup, seller_worker, stream_messages, wait_until, TestApp,
};
use futures::future::join_all;
use invoicer::api::Endpoint;
use invoicer::client::{call_raw, ServiceError};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The requests these tests make again and again, on an app whose worker has a seller (so the
/// render endpoints answer with documents): `TestApp::with_worker_args(seller_worker())`.
trait Api {
    async fn fails(&self, subject: &str, body: Value, code: &str) -> ServiceError;
    async fn tenant(&self, tenant: &str);
    async fn subscribe(
        &self,
        tenant: &str,
        deployment: Uuid,
        started_at: &str,
        storage: bool,
    ) -> Uuid;
    async fn list_all(&self, subject: &str, filter: Value, limit: i64) -> (Vec<Value>, Vec<usize>);
    async fn invoice_of(&self, tenant: &str, period_start: &str) -> Value;
    async fn outbox_msg_ids(&self, invoice: &str) -> Vec<String>;
    async fn event_for(&self, subject: &str, id: &str) -> Value;
}

impl Api for TestApp {
    /// A request that must fail with `code` (and its status header).
    async fn fails(&self, subject: &str, body: Value, code: &str) -> ServiceError {
        let r = self.call(subject, &body).await;
        expect_error(r, code, &format!("{subject} {body}"))
    }

    async fn tenant(&self, tenant: &str) {
        self.ok("billing.admin.tenants.put", json!({ "tenant_id": tenant }))
            .await;
    }

    /// A subscription from `started_at` with no end, with the seed add-on if `storage`.
    async fn subscribe(
        &self,
        tenant: &str,
        deployment: Uuid,
        started_at: &str,
        storage: bool,
    ) -> Uuid {
        let id = Uuid::new_v4();
        let addons: Vec<&str> = if storage {
            vec!["storage_50gb"]
        } else {
            vec![]
        };
        self.ok(
            "billing.admin.subscriptions.put",
            json!({"id": id, "tenant_id": tenant, "deployment_id": deployment, "plan": "studio",
                   "addons": addons, "started_at": started_at}),
        )
        .await;
        id
    }

    /// Every invoice a list (admin or tenant) returns for `filter`, following cursors with
    /// `limit`, and the size of each page.
    async fn list_all(&self, subject: &str, filter: Value, limit: i64) -> (Vec<Value>, Vec<usize>) {
        list_pages(self, subject, filter, limit).await
    }

    /// The one invoice of a tenant for a period (admin view, with lines).
    async fn invoice_of(&self, tenant: &str, period_start: &str) -> Value {
        let list = self
            .ok(
                "billing.admin.invoices.list",
                json!({"tenant_id": tenant, "period_start": period_start}),
            )
            .await;
        let invoices = list["invoices"].as_array().expect("invoices array");
        assert_eq!(invoices.len(), 1, "{tenant} {period_start}: {list}");
        self.ok(
            "billing.admin.invoices.get",
            json!({"id": invoices[0]["id"]}),
        )
        .await
    }

    /// Outbox rows announcing `invoice` (msg ids `<id>:<status>`).
    async fn outbox_msg_ids(&self, invoice: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT msg_id FROM outbox WHERE msg_id LIKE $1 || ':%' ORDER BY id")
            .bind(invoice)
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }

    /// Waits until `subject` on BILLING_EVENTS carries an event for invoice `id`; returns it.
    async fn event_for(&self, subject: &str, id: &str) -> Value {
        let found = std::sync::Mutex::new(None);
        wait_until(&format!("{subject} is published for {id}"), || async {
            let events = stream_messages(&self.js, "BILLING_EVENTS", subject).await;
            let mine: Vec<Value> = events.into_iter().filter(|e| e["id"] == id).collect();
            assert!(
                mine.len() <= 1,
                "{subject} for {id} published twice: {mine:?}"
            );
            let hit = mine.into_iter().next();
            let seen = hit.is_some();
            *found.lock().unwrap() = hit;
            seen
        })
        .await;
        found.into_inner().unwrap().unwrap()
    }
}

async fn list_pages(
    env: &TestApp,
    subject: &str,
    filter: Value,
    limit: i64,
) -> (Vec<Value>, Vec<usize>) {
    let mut all = Vec::new();
    let mut pages = Vec::new();
    let mut cursor = Value::Null;
    loop {
        assert!(pages.len() < 100, "{subject} {filter}: cursors never end");
        let mut body = filter.clone();
        body["limit"] = json!(limit);
        if !cursor.is_null() {
            body["cursor"] = cursor.clone();
        }
        let page = env.ok(subject, body.clone()).await;
        let invoices = page["invoices"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"))
            .clone();
        assert!(
            invoices.len() as i64 <= limit,
            "{body}: page larger than limit: {page}"
        );
        for inv in &invoices {
            assert!(
                inv.get("lines").is_none(),
                "list replies carry no lines: {inv}"
            );
        }
        cursor = page["next_cursor"].clone();
        assert!(cursor.is_null() || cursor.is_string(), "{page}");
        if !cursor.is_null() {
            // A cursor is only handed out when another page follows: no empty last page.
            assert_eq!(
                invoices.len() as i64,
                limit,
                "{body}: short page with a cursor: {page}"
            );
        }
        pages.push(invoices.len());
        all.extend(invoices);
        if cursor.is_null() {
            return (all, pages);
        }
    }
}

fn status_for(code: &str) -> &'static str {
    match code {
        "bad_request" => "400",
        "not_found" => "404",
        "conflict" => "409",
        "internal" => "500",
        other => panic!("not a contract error code: {other:?}"),
    }
}

/// The reply must be the contract's error with `code`, the matching header and a message.
fn expect_error(r: Result<Value, ServiceError>, code: &str, what: &str) -> ServiceError {
    check_error(r, code, what).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`expect_error`], reporting instead of panicking.
fn check_error(
    r: Result<Value, ServiceError>,
    code: &str,
    what: &str,
) -> Result<ServiceError, String> {
    let e = match r {
        Ok(v) => return Err(format!("{what}: expected {code}, got success {v}")),
        Err(e) => e,
    };
    if e.code != code {
        return Err(format!("{what}: expected {code}, got {e:?}"));
    }
    if e.status.as_deref() != Some(status_for(code)) {
        return Err(format!("{what}: Nats-Service-Error-Code header: {e:?}"));
    }
    if e.message.trim().is_empty() {
        return Err(format!("{what}: empty error message"));
    }
    Ok(e)
}

fn tenant_subject(ep: Endpoint, tenant: &str) -> String {
    ep.subject().replace('*', tenant)
}

fn usage(
    deployment: Uuid,
    days: std::ops::Range<u32>,
    per_day: usize,
    quantity: &str,
) -> Vec<Value> {
    let mut out = Vec::new();
    for day in days {
        for _ in 0..per_day {
            out.push(json!({
                "event_id": Uuid::new_v4(),
                "deployment_id": deployment,
                "resource_kind": "droplet_hours",
                "quantity": quantity,
                "occurred_at": format!("2026-04-{day:02}T06:00:00Z"),
            }));
        }
    }
    out
}

/// The priced content of a line, without its identity.
fn line_content(l: &Value) -> Value {
    json!({
        "kind": l["kind"], "deployment_id": l["deployment_id"], "resource_kind": l["resource_kind"],
        "description": l["description"], "quantity": l["quantity"], "unit_price": l["unit_price"],
        "amount_cents": l["amount_cents"],
    })
}

fn lines_of(v: &Value) -> Vec<Value> {
    v["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines: {v}"))
        .iter()
        .map(line_content)
        .collect()
}

fn totals(v: &Value) -> (i64, i64, i64) {
    (
        v["subtotal_cents"].as_i64().unwrap(),
        v["tax_cents"].as_i64().unwrap(),
        v["total_cents"].as_i64().unwrap(),
    )
}

fn ids(invoices: &[Value]) -> Vec<String> {
    invoices
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Bad input on every endpoint
// ---------------------------------------------------------------------------------------------

const BAD: &str = "bad_request";

/// Payloads every endpoint must refuse as `bad_request`: not a JSON object at all.
fn unparseable() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty payload", b"".to_vec()),
        ("whitespace payload", b" \n\t".to_vec()),
        ("malformed JSON", br#"{"id": "#.to_vec()),
        ("not JSON", b"hello".to_vec()),
        ("invalid UTF-8", b"\xff\xfe{}".to_vec()),
        ("JSON null", b"null".to_vec()),
        ("JSON number", b"42".to_vec()),
        ("JSON string", br#""acme""#.to_vec()),
        (
            "trailing garbage",
            br#"{"period_start": "2026-04-01"} x"#.to_vec(),
        ),
    ]
}

fn with(base: &Value, key: &str, v: Value) -> Value {
    let mut b = base.clone();
    b[key] = v;
    b
}

fn without(base: &Value, key: &str) -> Value {
    let mut b = base.clone();
    b.as_object_mut().unwrap().remove(key);
    b
}

/// Tenant ids that are not NATS subject tokens (or not 1-64 of `[A-Za-z0-9_-]`).
fn bad_tenant_ids() -> Vec<Value> {
    vec![
        json!("acme.corp"),
        json!("acme corp"),
        json!("*"),
        json!(">"),
        json!(""),
        json!("a".repeat(65)),
        json!("acmé"),
        json!("acme\u{0}"),
        json!(7),
        json!(null),
    ]
}

/// What the bad-input test knows: ids of the invoices it set up.
struct Fixture {
    /// acme's April draft (issued and paid by the unknown-field checks).
    acme_invoice: String,
    /// globex's April draft (voided by the unknown-field checks).
    globex_invoice: String,
}

/// Endpoint-specific refusals: (what, body, code). The match is exhaustive, so a new endpoint
/// cannot be added without cases here.
fn bad_cases(ep: Endpoint) -> Vec<(String, Value, &'static str)> {
    let plan = json!({"code": "basic", "name": "Basic", "currency": "AUD", "base_price": "50.00",
                      "included": {"droplet_hours": "1488"},
                      "overage": {"droplet_hours": {"unit_price": "0.01"}}});
    let addon = json!({"code": "backup", "name": "Backups", "currency": "AUD", "price": "7.50"});
    let sub = json!({"id": Uuid::new_v4(), "tenant_id": "acme", "deployment_id": Uuid::new_v4(),
                     "plan": "studio", "addons": ["storage_50gb"],
                     "started_at": "2026-03-15T00:00:00Z"});
    let tenant = json!({"tenant_id": "acme", "tax_rate": "0.10", "tax_label": "GST"});
    let random_id = json!({"id": Uuid::new_v4()});
    let c = |what: &str, body: Value, code: &'static str| (what.to_string(), body, code);
    let id_cases = || {
        vec![
            c("bad UUID in id", json!({"id": "not-a-uuid"}), BAD),
            c(
                "truncated UUID in id",
                json!({"id": "6f1c1c2e-8d4a-4f43-9d4b"}),
                BAD,
            ),
            c("empty id", json!({"id": ""}), BAD),
            c("numeric id", json!({"id": 42}), BAD),
            c("null id", json!({"id": null}), BAD),
            c("missing id", json!({}), BAD),
            c("an array, not an object", json!([]), BAD),
            c("unknown id", random_id.clone(), "not_found"),
        ]
    };
    let list_cases = || {
        vec![
            c("string limit", json!({"limit": "x"}), BAD),
            c("over-large limit", json!({"limit": 501}), BAD),
            c("zero limit", json!({"limit": 0}), BAD),
            c("negative limit", json!({"limit": -1}), BAD),
            c("float limit", json!({"limit": 2.5}), BAD),
            c("huge limit", json!({"limit": 1e30}), BAD),
            c("garbage cursor", json!({"cursor": "garbage"}), BAD),
            c(
                "cursor with a bad id",
                json!({"cursor": "2026-04-01~not-a-uuid"}),
                BAD,
            ),
            c(
                "cursor with a bad date",
                json!({"cursor": format!("2026-13-01~{}", Uuid::new_v4())}),
                BAD,
            ),
            c("empty cursor", json!({"cursor": ""}), BAD),
            c("numeric cursor", json!({"cursor": 42}), BAD),
            c("unknown status", json!({"status": "pending"}), BAD),
            c("numeric status", json!({"status": 1}), BAD),
            c("month, not a date", json!({"period_start": "2026-04"}), BAD),
            c(
                "impossible date",
                json!({"period_start": "2026-02-30"}),
                BAD,
            ),
            c(
                "date PostgreSQL cannot store",
                json!({"period_start": "-5000-01-01"}),
                BAD,
            ),
            c(
                "cursor PostgreSQL cannot store",
                json!({"cursor": format!("-5000-01-01~{}", Uuid::new_v4())}),
                BAD,
            ),
        ]
    };
    let transition_cases = || {
        let mut v = id_cases();
        v.push(c(
            "paid_at not a timestamp",
            json!({"id": Uuid::new_v4(), "paid_at": "yesterday"}),
            BAD,
        ));
        v.push(c(
            "numeric reason",
            json!({"id": Uuid::new_v4(), "reason": 42}),
            BAD,
        ));
        v
    };
    match ep {
        Endpoint::PlansPut => vec![
            c("float price", with(&plan, "base_price", json!(50.0)), BAD),
            c("integer price", with(&plan, "base_price", json!(50)), BAD),
            c(
                "non-numeric price",
                with(&plan, "base_price", json!("fifty")),
                BAD,
            ),
            c(
                "exponent price",
                with(&plan, "base_price", json!("5e1")),
                BAD,
            ),
            c(
                "negative price",
                with(&plan, "base_price", json!("-1.00")),
                BAD,
            ),
            c("missing price", without(&plan, "base_price"), BAD),
            c("missing code", without(&plan, "code"), BAD),
            c(
                "code not a token",
                with(&plan, "code", json!("studio plan")),
                BAD,
            ),
            c("empty name", with(&plan, "name", json!("  ")), BAD),
            c(
                "lower-case currency",
                with(&plan, "currency", json!("aud")),
                BAD,
            ),
            c("numeric currency", with(&plan, "currency", json!(36)), BAD),
            c(
                "float allowance",
                with(&plan, "included", json!({"droplet_hours": 1488})),
                BAD,
            ),
            c(
                "included not a map",
                with(&plan, "included", json!(["droplet_hours"])),
                BAD,
            ),
            c(
                "float overage price",
                with(
                    &plan,
                    "overage",
                    json!({"droplet_hours": {"unit_price": 0.01}}),
                ),
                BAD,
            ),
            c(
                "overage with both a price and tiers",
                with(
                    &plan,
                    "overage",
                    json!({"droplet_hours": {"unit_price": "0.01", "mode": "graduated",
                                             "tiers": [{"up_to": null, "unit_price": "0.01"}]}}),
                ),
                BAD,
            ),
            c(
                "unknown tier mode",
                with(
                    &plan,
                    "overage",
                    json!({"droplet_hours": {"mode": "stepped",
                                             "tiers": [{"up_to": null, "unit_price": "0.01"}]}}),
                ),
                BAD,
            ),
            c(
                "tiers that do not end unbounded",
                with(
                    &plan,
                    "overage",
                    json!({"droplet_hours": {"mode": "graduated",
                                             "tiers": [{"up_to": "1000", "unit_price": "0.01"}]}}),
                ),
                BAD,
            ),
            c(
                "unknown proration",
                with(&plan, "proration", json!("weekly")),
                BAD,
            ),
            c("an array, not an object", json!([plan.clone()]), BAD),
        ],
        Endpoint::AddonsPut => vec![
            c("float price", with(&addon, "price", json!(7.5)), BAD),
            c("missing price", without(&addon, "price"), BAD),
            c("negative price", with(&addon, "price", json!("-7.50")), BAD),
            c("empty code", with(&addon, "code", json!("")), BAD),
            c("numeric name", with(&addon, "name", json!(42)), BAD),
            c(
                "bad currency",
                with(&addon, "currency", json!("dollars")),
                BAD,
            ),
            c(
                "resource_kind not a token",
                with(&addon, "resource_kind", json!("gb hours")),
                BAD,
            ),
        ],
        Endpoint::SubscriptionsPut => {
            let mut v = vec![
                c("bad UUID in id", with(&sub, "id", json!("not-a-uuid")), BAD),
                c("numeric id", with(&sub, "id", json!(42)), BAD),
                c(
                    "bad deployment UUID",
                    with(&sub, "deployment_id", json!("123")),
                    BAD,
                ),
                c("missing tenant_id", without(&sub, "tenant_id"), BAD),
                c("unknown plan", with(&sub, "plan", json!("enterprise")), BAD),
                c("missing plan", without(&sub, "plan"), BAD),
                c(
                    "unknown addon",
                    with(&sub, "addons", json!(["gpu_pack"])),
                    BAD,
                ),
                c(
                    "addon listed twice",
                    with(&sub, "addons", json!(["storage_50gb", "storage_50gb"])),
                    BAD,
                ),
                c(
                    "addons not a list",
                    with(&sub, "addons", json!("storage_50gb")),
                    BAD,
                ),
                c(
                    "started_at not a timestamp",
                    with(&sub, "started_at", json!("yesterday")),
                    BAD,
                ),
                c(
                    "started_at a bare date",
                    with(&sub, "started_at", json!("2026-03-15")),
                    BAD,
                ),
                c(
                    "ended before it started",
                    with(&sub, "ended_at", json!("2026-03-01T00:00:00Z")),
                    BAD,
                ),
            ];
            for t in bad_tenant_ids() {
                v.push(c(
                    &format!("tenant_id {t}"),
                    with(&sub, "tenant_id", t),
                    BAD,
                ));
            }
            v
        }
        Endpoint::TenantsPut => {
            let mut v = vec![
                c("missing tenant_id", without(&tenant, "tenant_id"), BAD),
                c("float tax_rate", with(&tenant, "tax_rate", json!(0.1)), BAD),
                c(
                    "tax_rate of 150%",
                    with(&tenant, "tax_rate", json!("1.5")),
                    BAD,
                ),
                c(
                    "negative tax_rate",
                    with(&tenant, "tax_rate", json!("-0.1")),
                    BAD,
                ),
                c(
                    "tax_rate not a number",
                    with(&tenant, "tax_rate", json!("ten")),
                    BAD,
                ),
                c(
                    "tax_exempt not a bool",
                    with(&tenant, "tax_exempt", json!("yes")),
                    BAD,
                ),
                c(
                    "empty tax_label",
                    with(&tenant, "tax_label", json!(" ")),
                    BAD,
                ),
                c(
                    "bad currency",
                    with(&tenant, "currency", json!("dollars")),
                    BAD,
                ),
            ];
            for t in bad_tenant_ids() {
                v.push(c(
                    &format!("tenant_id {t}"),
                    with(&tenant, "tenant_id", t),
                    BAD,
                ));
            }
            v
        }
        Endpoint::AdminList => {
            let mut v = list_cases();
            v.push(c(
                "tenant_id filter not a token",
                json!({"tenant_id": "a.b"}),
                BAD,
            ));
            v.push(c("numeric tenant_id filter", json!({"tenant_id": 5}), BAD));
            v
        }
        Endpoint::TenantList => list_cases(),
        Endpoint::AdminGet | Endpoint::TenantGet => id_cases(),
        Endpoint::AdminRender | Endpoint::TenantRender => {
            let id = Uuid::new_v4();
            let mut v = id_cases();
            v.push(c(
                "unknown format",
                json!({"id": id, "format": "docx"}),
                BAD,
            ));
            v.push(c(
                "format in capitals",
                json!({"id": id, "format": "PDF"}),
                BAD,
            ));
            v.push(c("empty format", json!({"id": id, "format": ""}), BAD));
            v.push(c("numeric format", json!({"id": id, "format": 1}), BAD));
            v.push(c("format without an id", json!({"format": "pdf"}), BAD));
            v
        }
        Endpoint::AdminIssue | Endpoint::AdminMarkPaid | Endpoint::AdminVoid => transition_cases(),
        Endpoint::RevenueSummary => vec![
            c("missing period_start", json!({}), BAD),
            c("null period_start", json!({"period_start": null}), BAD),
            c("month, not a date", json!({"period_start": "2026-04"}), BAD),
            c(
                "date PostgreSQL cannot store",
                json!({"period_start": "-5000-01-01"}),
                BAD,
            ),
            c(
                "numeric period_start",
                json!({"period_start": 20260401}),
                BAD,
            ),
        ],
        Endpoint::TenantPreview => vec![
            c("month, not a date", json!({"period_start": "2026-04"}), BAD),
            c(
                "date PostgreSQL cannot store",
                json!({"period_start": "-5000-01-01"}),
                BAD,
            ),
            c(
                "numeric period_start",
                json!({"period_start": 20260401}),
                BAD,
            ),
        ],
        Endpoint::AdminPreview => vec![
            c(
                "missing tenant_id",
                json!({"period_start": "2026-04-01"}),
                BAD,
            ),
            c(
                "tenant_id not a tenant id",
                json!({"tenant_id": "acme corp"}),
                BAD,
            ),
            c(
                "month, not a date",
                json!({"tenant_id": "acme", "period_start": "2026-04"}),
                BAD,
            ),
        ],
        // It has no fields: only a body that is not an object is wrong.
        Endpoint::Health => vec![
            c("a list", json!([]), BAD),
            c("a boolean", json!(true), BAD),
        ],
        Endpoint::Quote => {
            let q = json!({"plan": "studio", "addons": ["storage_50gb"],
                           "usage": {"droplet_hours": "2160"}, "period_start": "2026-04-01"});
            vec![
                c("missing plan", without(&q, "plan"), BAD),
                c("numeric plan", with(&q, "plan", json!(42)), BAD),
                c("unknown plan", with(&q, "plan", json!("enterprise")), BAD),
                c(
                    "unknown addon",
                    with(&q, "addons", json!(["gpu_pack"])),
                    BAD,
                ),
                c(
                    "addons not a list",
                    with(&q, "addons", json!("storage_50gb")),
                    BAD,
                ),
                c(
                    "float usage",
                    with(&q, "usage", json!({"droplet_hours": 2160})),
                    BAD,
                ),
                c(
                    "negative usage",
                    with(&q, "usage", json!({"droplet_hours": "-1"})),
                    BAD,
                ),
                c(
                    "usage kind not a token",
                    with(&q, "usage", json!({"droplet hours": "1"})),
                    BAD,
                ),
                c(
                    "usage not a map",
                    with(&q, "usage", json!(["droplet_hours"])),
                    BAD,
                ),
                c("float tax_rate", with(&q, "tax_rate", json!(0.1)), BAD),
                c("tax_rate of 200%", with(&q, "tax_rate", json!("2")), BAD),
                c(
                    "month, not a date",
                    with(&q, "period_start", json!("2026-04")),
                    BAD,
                ),
                c(
                    "active_from not a timestamp",
                    with(&q, "active_from", json!("yesterday")),
                    BAD,
                ),
                c(
                    "active_to before active_from",
                    with(
                        &with(&q, "active_from", json!("2026-04-10T00:00:00Z")),
                        "active_to",
                        json!("2026-04-05T00:00:00Z"),
                    ),
                    BAD,
                ),
                c(
                    "active only after the period",
                    with(&q, "active_from", json!("2026-06-01T00:00:00Z")),
                    BAD,
                ),
                c(
                    "plan code with a NUL",
                    with(&q, "plan", json!("studio\u{0}")),
                    BAD,
                ),
                c(
                    "addon code with a NUL",
                    with(&q, "addons", json!(["\u{0}"])),
                    BAD,
                ),
                c(
                    "date beyond RFC 3339",
                    with(&q, "period_start", json!("-5000-01-01")),
                    BAD,
                ),
            ]
        }
    }
}

/// A valid request with unknown fields (top-level and nested) that must succeed, and a check
/// of its reply. Runs in `Endpoint::ALL` order, so the transitions see draft → issued → paid.
async fn accepts_unknown_fields(env: &TestApp, ep: Endpoint, fx: &Fixture) {
    let subject = tenant_subject(ep, "acme");
    let extra = |mut v: Value| {
        v["x_unknown_field"] = json!({"nested": [1, 2.5, "three"]});
        v["comment"] = json!("ignored");
        v
    };
    let what = format!("{subject} with unknown fields");
    match ep {
        Endpoint::PlansPut => {
            let body = extra(json!({"code": "basic", "name": "Basic", "currency": "AUD",
                "base_price": "20.00", "included": {"droplet_hours": "744"},
                "overage": {"droplet_hours": {"unit_price": "0.02", "note": "nested unknown"}}}));
            let v = env.ok(&subject, body).await;
            assert_eq!(v["code"], "basic", "{what}: {v}");
            assert_eq!(v["base_price"], "20.00", "{what}: {v}");
            assert_eq!(
                v["overage"]["droplet_hours"]["unit_price"], "0.02",
                "{what}: {v}"
            );
            assert!(
                v.get("x_unknown_field").is_none(),
                "{what}: unknown fields are not stored: {v}"
            );
        }
        Endpoint::AddonsPut => {
            let body = extra(
                json!({"code": "backup", "name": "Backups", "currency": "AUD", "price": "5.00"}),
            );
            let v = env.ok(&subject, body).await;
            assert_eq!(
                (v["code"].as_str(), v["price"].as_str()),
                (Some("backup"), Some("5.00")),
                "{what}: {v}"
            );
        }
        Endpoint::SubscriptionsPut => {
            // A subscription never creates its tenant.
            env.tenant("initech").await;
            let id = Uuid::new_v4();
            let body = extra(
                json!({"id": id, "tenant_id": "initech", "deployment_id": Uuid::new_v4(),
                "plan": "basic", "addons": ["backup"], "started_at": "2026-04-01T00:00:00Z"}),
            );
            let v = env.ok(&subject, body).await;
            assert_eq!(v["id"], json!(id), "{what}: {v}");
            assert_eq!(
                (v["tenant_id"].as_str(), v["plan"].as_str()),
                (Some("initech"), Some("basic")),
                "{what}: {v}"
            );
        }
        Endpoint::TenantsPut => {
            let body =
                extra(json!({"tenant_id": "initech", "tax_rate": "0.15", "tax_label": "VAT"}));
            let v = env.ok(&subject, body).await;
            assert_eq!(
                (
                    v["tenant_id"].as_str(),
                    v["tax_rate"].as_str(),
                    v["tax_label"].as_str()
                ),
                (Some("initech"), Some("0.15"), Some("VAT")),
                "{what}: {v}"
            );
        }
        Endpoint::AdminList => {
            let v = env
                .ok(&subject, extra(json!({"limit": 500, "tenant_id": "acme"})))
                .await;
            assert_eq!(
                ids(v["invoices"].as_array().unwrap()),
                vec![fx.acme_invoice.clone()],
                "{what}: {v}"
            );
        }
        Endpoint::TenantList => {
            let v = env.ok(&subject, extra(json!({"status": "void"}))).await;
            assert_eq!(
                v["invoices"],
                json!([]),
                "{what}: acme has nothing void: {v}"
            );
        }
        Endpoint::AdminGet | Endpoint::TenantGet => {
            let v = env
                .ok(&subject, extra(json!({"id": fx.acme_invoice})))
                .await;
            assert_eq!(v["id"], fx.acme_invoice.as_str(), "{what}: {v}");
            assert!(
                v["lines"].as_array().is_some_and(|l| !l.is_empty()),
                "{what}: {v}"
            );
        }
        Endpoint::AdminIssue => {
            let v = env
                .ok(&subject, extra(json!({"id": fx.acme_invoice})))
                .await;
            assert_eq!(v["status"], "issued", "{what}: {v}");
        }
        Endpoint::AdminMarkPaid => {
            let v = env
                .ok(&subject, extra(json!({"id": fx.acme_invoice})))
                .await;
            assert_eq!(v["status"], "paid", "{what}: {v}");
        }
        Endpoint::AdminVoid => {
            let v = env
                .ok(
                    &subject,
                    extra(json!({"id": fx.globex_invoice, "reason": "duplicate"})),
                )
                .await;
            assert_eq!(
                (v["status"].as_str(), v["void_reason"].as_str()),
                (Some("void"), Some("duplicate")),
                "{what}: {v}"
            );
        }
        Endpoint::RevenueSummary => {
            let v = env
                .ok(&subject, extra(json!({"period_start": "2026-04-01"})))
                .await;
            assert!(
                v["by_deployment"].is_array() && v["by_resource_kind"].is_array(),
                "{what}: {v}"
            );
        }
        Endpoint::TenantPreview | Endpoint::AdminPreview => {
            let v = env
                .ok(
                    &subject,
                    extra(json!({"tenant_id": "acme", "period_start": "2026-04-01"})),
                )
                .await;
            assert_eq!(
                (v["tenant_id"].as_str(), v["status"].as_str()),
                (Some("acme"), Some("preview")),
                "{what}: {v}"
            );
        }
        Endpoint::Quote => {
            let v = env
                .ok(
                    &subject,
                    extra(json!({"plan": "studio", "usage": {"droplet_hours": "0"},
                                             "period_start": "2026-04-01"})),
                )
                .await;
            assert_eq!(totals(&v), (5000, 500, 5500), "{what}: {v}");
        }
        Endpoint::Health => {
            let v = env.ok(&subject, extra(json!({}))).await;
            let database = v["checks"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == "database"))
                .cloned();
            assert_eq!(
                database.map(|d| d["ok"].clone()),
                Some(json!(true)),
                "{what}: {v}"
            );
            assert!(v["ready"].is_boolean(), "{what}: {v}");
        }
        Endpoint::AdminRender | Endpoint::TenantRender => {
            let v = env
                .ok(&subject, extra(json!({"id": fx.acme_invoice})))
                .await;
            assert_eq!(v["content_type"], "text/html; charset=utf-8", "{what}");
            let body = v["body"].as_str().unwrap_or_default();
            assert!(
                body.starts_with("<!DOCTYPE html>") && body.contains("Tax invoice"),
                "{what}: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_bad_input_with_a_typed_error() {
    let env = TestApp::with_worker_args(seller_worker()).await;

    // The service is discoverable and serves exactly the endpoints this test covers.
    let info = env.ok("$SRV.INFO.invoicer", json!({})).await;
    let served: BTreeSet<String> = info["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("$SRV.INFO has no endpoints: {info}"))
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = Endpoint::ALL
        .iter()
        .map(|e| e.subject().to_string())
        .collect();
    assert_eq!(served, expected, "$SRV.INFO.invoicer endpoints");

    load_seed_catalog(&env.client).await;
    for t in ["acme", "globex"] {
        env.tenant(t).await;
        env.subscribe(t, Uuid::new_v4(), "2026-03-15T00:00:00Z", true)
            .await;
    }
    let done = rollup(
        &env.js,
        json!({"period_start": "2026-04-01", "draft": true}),
    )
    .await;
    assert_eq!(done["invoices_drafted"], 2, "{done}");
    let fx = Fixture {
        acme_invoice: env.invoice_of("acme", "2026-04-01").await["id"]
            .as_str()
            .unwrap()
            .to_string(),
        globex_invoice: env.invoice_of("globex", "2026-04-01").await["id"]
            .as_str()
            .unwrap()
            .to_string(),
    };

    // Every refusal is checked and every wrong one reported, not just the first.
    let mut checked = 0;
    let mut wrong = Vec::new();
    for ep in Endpoint::ALL {
        let subject = tenant_subject(ep, "acme");
        for (what, payload) in unparseable() {
            let r = env.send(&subject, payload).await;
            wrong.extend(check_error(r, BAD, &format!("{subject}: {what}")).err());
            checked += 1;
        }
        for (what, body, code) in bad_cases(ep) {
            let r = env.call(&subject, &body).await;
            wrong.extend(check_error(r, code, &format!("{subject}: {what}: {body}")).err());
            checked += 1;
        }
        if ep.subject().contains('*') {
            // The tenant in the subject is validated like any other tenant id.
            let long = tenant_subject(ep, &"a".repeat(65));
            let r = env.call(&long, &json!({"id": Uuid::new_v4()})).await;
            wrong.extend(check_error(r, BAD, &format!("{long}: tenant id too long")).err());
            let r = env
                .call(&tenant_subject(ep, "acmé"), &json!({"id": Uuid::new_v4()}))
                .await;
            wrong.extend(
                check_error(r, BAD, &format!("{}: non-ASCII tenant id", ep.subject())).err(),
            );
            checked += 2;
        }
        accepts_unknown_fields(&env, ep, &fx).await;
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} bad inputs were not refused as they should be:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(checked > 200, "only {checked} bad inputs checked");

    // Nothing above changed what it refused: acme still has only its paid invoice, the plans
    // that were refused were not stored, and the refused subscriptions made no tenants.
    let tenants: Vec<String> =
        sqlx::query_scalar("SELECT tenant_id FROM tenants ORDER BY tenant_id")
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(tenants, ["acme", "globex", "initech"]);
    let plans: Vec<String> = sqlx::query_scalar("SELECT code FROM plans ORDER BY code")
        .fetch_all(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(plans, ["basic", "studio"]);
    let acme = env
        .ok("billing.admin.invoices.get", json!({"id": fx.acme_invoice}))
        .await;
    assert_eq!(acme["status"], "paid");
}

// ---------------------------------------------------------------------------------------------
// 2. Random payloads at every endpoint
// ---------------------------------------------------------------------------------------------

/// A generated request: raw bytes, a random JSON document, or a valid request with one field
/// removed, replaced by a random value, or added.
#[derive(Debug, Clone)]
enum Fuzz {
    Bytes(Vec<u8>),
    Json(Value),
    Remove(usize),
    Replace(usize, Value),
    Add(String, Value),
}

const FIELD_NAMES: &[&str] = &[
    "id",
    "tenant_id",
    "deployment_id",
    "plan",
    "addons",
    "usage",
    "code",
    "name",
    "currency",
    "base_price",
    "price",
    "included",
    "overage",
    "proration",
    "resource_kind",
    "mode",
    "tiers",
    "up_to",
    "unit_price",
    "status",
    "period_start",
    "period_end",
    "limit",
    "cursor",
    "paid_at",
    "reason",
    "tax_rate",
    "tax_label",
    "tax_exempt",
    "started_at",
    "ended_at",
    "active_from",
    "active_to",
    "droplet_hours",
];

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(FIELD_NAMES).prop_map(|s: &str| s.to_string()),
        1 => "[a-z_]{1,10}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-600i64..600).prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,16}".prop_map(Value::String),
        proptest::sample::select(vec![
            "",
            " ",
            "2026-04-01",
            "2026-04-15",
            "2026-02-30",
            "0001-01-01",
            "9999-12-31",
            "2026-04-01T00:00:00Z",
            "2026-04-16T12:00:00+10:00",
            "not-a-uuid",
            "00000000-0000-0000-0000-000000000000",
            "0.01",
            "-1",
            "0",
            "1e3",
            "99999999999999999999999999999",
            "0.0000000000000000000000000001",
            "acme",
            "globex",
            "a.b",
            "*",
            ">",
            "draft",
            "issued",
            "paid",
            "void",
            "graduated",
            "volume",
            "daily",
            "none",
            "storage_50gb",
            "AUD",
            "USD",
            "GST",
            "2026-04-01~00000000-0000-0000-0000-000000000000",
            "\u{0}",
            "é",
            "🧾",
        ])
        .prop_map(|s| Value::String(s.to_string())),
        Just(Value::String(Uuid::new_v4().to_string())),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map(json_key(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn fuzz() -> impl Strategy<Value = Fuzz> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..48).prop_map(Fuzz::Bytes),
        2 => json_value().prop_map(Fuzz::Json),
        1 => any::<usize>().prop_map(Fuzz::Remove),
        3 => (any::<usize>(), json_value()).prop_map(|(i, v)| Fuzz::Replace(i, v)),
        1 => (json_key(), json_value()).prop_map(|(k, v)| Fuzz::Add(k, v)),
    ]
}

/// The tenant token for `billing.tenant.<t>.…`: usually acme, sometimes another valid or
/// invalid (too long, non-ASCII) id. Always a legal subject token.
fn tenant_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("acme".to_string()),
        1 => "[A-Za-z0-9_-]{1,70}",
        1 => "[a-zé🧾]{1,8}",
    ]
}

/// A valid request per endpoint, for the mutations to start from.
fn template(ep: Endpoint, invoice: &str) -> Value {
    match ep {
        Endpoint::PlansPut => {
            json!({"code": "fuzz", "name": "Fuzz", "currency": "AUD", "base_price": "10.00",
            "included": {"droplet_hours": "100"}, "proration": "daily",
            "overage": {"droplet_hours": {"mode": "graduated", "tiers": [
                {"up_to": "1000", "unit_price": "0.01"}, {"up_to": null, "unit_price": "0.008"}]}}})
        }
        Endpoint::AddonsPut => {
            json!({"code": "fuzz_addon", "name": "Fuzz addon", "currency": "AUD",
            "price": "1.25", "resource_kind": "storage_gb"})
        }
        Endpoint::SubscriptionsPut => json!({"id": "5eed0000-0000-4000-8000-00000000f001",
            "tenant_id": "acme", "deployment_id": "5eed0000-0000-4000-8000-00000000f002", "plan": "studio",
            "addons": ["storage_50gb"], "started_at": "2026-03-15T00:00:00Z", "ended_at": null}),
        Endpoint::TenantsPut => json!({"tenant_id": "acme", "currency": "AUD", "tax_rate": "0.10",
            "tax_label": "GST", "tax_exempt": false}),
        Endpoint::AdminList => {
            json!({"status": "issued", "period_start": "2026-04-01", "limit": 10,
            "cursor": null, "tenant_id": "acme"})
        }
        Endpoint::TenantList => {
            json!({"status": "issued", "period_start": "2026-04-01", "limit": 10, "cursor": null})
        }
        Endpoint::AdminGet | Endpoint::TenantGet => json!({"id": invoice}),
        Endpoint::AdminIssue | Endpoint::AdminMarkPaid | Endpoint::AdminVoid => {
            json!({"id": invoice, "paid_at": "2026-05-10T00:00:00Z", "reason": "fuzz"})
        }
        Endpoint::RevenueSummary | Endpoint::TenantPreview => json!({"period_start": "2026-04-01"}),
        Endpoint::AdminPreview => json!({"tenant_id": "acme", "period_start": "2026-04-01"}),
        Endpoint::Quote => json!({"plan": "studio", "addons": ["storage_50gb"],
            "usage": {"droplet_hours": "2160"}, "period_start": "2026-04-01",
            "active_from": "2026-04-01T00:00:00Z", "active_to": null, "tax_rate": "0.10"}),
        // No fields of its own; one unknown field gives the mutations something to work on.
        Endpoint::Health => json!({"probe": "fuzz"}),
        Endpoint::AdminRender | Endpoint::TenantRender => {
            json!({"id": invoice, "format": "html"})
        }
    }
}

fn payload_for(f: &Fuzz, ep: Endpoint, invoice: &str) -> Vec<u8> {
    let mut t = template(ep, invoice);
    let keys: Vec<String> = t.as_object().unwrap().keys().cloned().collect();
    match f {
        Fuzz::Bytes(b) => return b.clone(),
        Fuzz::Json(v) => return v.to_string().into_bytes(),
        Fuzz::Remove(i) => {
            t.as_object_mut().unwrap().remove(&keys[i % keys.len()]);
        }
        Fuzz::Replace(i, v) => t[&keys[i % keys.len()]] = v.clone(),
        Fuzz::Add(k, v) => t[k] = v.clone(),
    }
    t.to_string().into_bytes()
}

/// A success reply has the shape its endpoint promises.
fn check_success(ep: Endpoint, tenant: &str, v: &Value) -> Result<(), String> {
    let ok = match ep {
        Endpoint::PlansPut => v["code"].is_string() && v["base_price"].is_string(),
        Endpoint::AddonsPut => v["code"].is_string() && v["price"].is_string(),
        Endpoint::SubscriptionsPut => {
            v["id"].is_string() && v["tenant_id"].is_string() && v["plan"].is_string()
        }
        Endpoint::TenantsPut => v["tenant_id"].is_string() && v["tax_rate"].is_string(),
        Endpoint::AdminList | Endpoint::TenantList => {
            (v["next_cursor"].is_null() || v["next_cursor"].is_string())
                && v["invoices"].as_array().is_some_and(|a| {
                    a.iter().all(|i| {
                        i["id"].is_string()
                            && i.get("lines").is_none()
                            && (ep == Endpoint::AdminList || i["tenant_id"] == tenant)
                    })
                })
        }
        Endpoint::AdminGet
        | Endpoint::TenantGet
        | Endpoint::AdminIssue
        | Endpoint::AdminMarkPaid
        | Endpoint::AdminVoid => {
            v["id"].is_string()
                && v["lines"].is_array()
                && ["draft", "issued", "paid", "void"].contains(&v["status"].as_str().unwrap_or(""))
                && (ep != Endpoint::TenantGet || v["tenant_id"] == tenant)
        }
        Endpoint::RevenueSummary => {
            v["by_deployment"].is_array() && v["by_resource_kind"].is_array()
        }
        Endpoint::TenantPreview | Endpoint::AdminPreview | Endpoint::Quote => {
            let sums = v["subtotal_cents"].as_i64().zip(v["tax_cents"].as_i64());
            v["lines"].is_array()
                && sums.is_some_and(|(s, t)| v["total_cents"].as_i64() == Some(s + t))
                && (ep != Endpoint::TenantPreview
                    || (v["tenant_id"] == tenant && v["status"] == "preview"))
                && (ep != Endpoint::AdminPreview || v["status"] == "preview")
        }
        Endpoint::Health => v["ready"].is_boolean() && v["checks"].is_array(),
        Endpoint::AdminRender | Endpoint::TenantRender => {
            ["text/html; charset=utf-8", "application/pdf"]
                .contains(&v["content_type"].as_str().unwrap_or(""))
                && v["body"].as_str().is_some_and(|b| !b.is_empty())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("malformed success reply: {v}"))
    }
}

/// Replies seen per (endpoint, "ok" or error code).
type Outcomes = std::sync::Mutex<BTreeMap<(&'static str, String), usize>>;

async fn check_fuzz_case(
    env: &TestApp,
    invoice: &str,
    f: &Fuzz,
    tenant: &str,
    outcomes: &Outcomes,
) -> Result<(), TestCaseError> {
    let replies = join_all(Endpoint::ALL.iter().map(|&ep| {
        let subject = tenant_subject(ep, tenant);
        let payload = payload_for(f, ep, invoice);
        async move {
            let r = call_raw(&env.client, &subject, payload.clone()).await;
            (ep, subject, payload, r)
        }
    }))
    .await;
    for (ep, subject, payload, r) in replies {
        let what = format!("{subject} <- {}", String::from_utf8_lossy(&payload));
        let r =
            r.map_err(|e| TestCaseError::fail(format!("{what}: no well-formed reply: {e:#}")))?;
        let outcome = r
            .as_ref()
            .map_or_else(|e| e.code.clone(), |_| "ok".to_string());
        *outcomes
            .lock()
            .unwrap()
            .entry((ep.subject(), outcome))
            .or_default() += 1;
        match r {
            Ok(v) => check_success(ep, tenant, &v)
                .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?,
            Err(e) => {
                prop_assert!(
                    ["bad_request", "not_found", "conflict", "internal"].contains(&e.code.as_str()),
                    "{}: unknown error code: {:?}",
                    what,
                    e
                );
                prop_assert_eq!(
                    e.status.as_deref(),
                    Some(status_for(&e.code)),
                    "{}: header: {:?}",
                    what,
                    e
                );
                prop_assert!(!e.message.is_empty(), "{}: empty message", what);
                // With a healthy database, no input is the service's fault.
                prop_assert_ne!(
                    e.code.as_str(),
                    "internal",
                    "{}: an input caused an internal error: {:?}",
                    what,
                    e
                );
            }
        }
    }
    Ok(())
}

#[test]
fn random_payloads_at_every_endpoint_get_well_formed_replies() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(TestApp::with_worker_args(seller_worker()));
    let invoice = rt.block_on(async {
        load_seed_catalog(&env.client).await;
        env.tenant("acme").await;
        env.subscribe("acme", Uuid::new_v4(), "2026-03-15T00:00:00Z", true)
            .await;
        let done = rollup(&env.js, json!({"period_start": "2026-04-01"})).await;
        assert_eq!(done["invoices_issued"], 1, "{done}");
        env.invoice_of("acme", "2026-04-01").await["id"]
            .as_str()
            .unwrap()
            .to_string()
    });

    // Deterministic, so a failure reproduces; PROPTEST_CASES explores further.
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config.clone(),
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let outcomes = Outcomes::default();
    let result = runner.run(&(fuzz(), tenant_token()), |(f, tenant)| {
        rt.block_on(check_fuzz_case(&env, &invoice, &f, &tenant, &outcomes))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator reaches past the parser: every endpoint refused some of what it was sent
    // as malformed and handled some of it (a success, or not_found/conflict on a parsed request).
    let outcomes = outcomes.into_inner().unwrap();
    for ep in Endpoint::ALL {
        let seen = |pred: &dyn Fn(&str) -> bool| {
            outcomes
                .keys()
                .any(|(subject, outcome)| *subject == ep.subject() && pred(outcome))
        };
        assert!(
            seen(&|o| o == "bad_request") && seen(&|o| o != "bad_request"),
            "{}: the {cases} cases did not both pass and fail parsing: {outcomes:?}",
            ep.subject()
        );
    }
    // The service survived all of it.
    rt.block_on(async {
        let v = env
            .ok("billing.admin.invoices.get", json!({"id": invoice}))
            .await;
        assert_eq!(v["id"], invoice.as_str());
    });
    let _guard = rt.enter();
    drop(env);
}

// ---------------------------------------------------------------------------------------------
// 3. Scoping
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_only_its_own_invoices() {
    let env = TestApp::with_worker_args(seller_worker()).await;
    load_seed_catalog(&env.client).await;
    for t in ["acme", "globex"] {
        env.tenant(t).await;
        env.subscribe(t, Uuid::new_v4(), "2026-03-01T00:00:00Z", true)
            .await;
    }
    for period in ["2026-03-01", "2026-04-01"] {
        let done = rollup(&env.js, json!({ "period_start": period })).await;
        assert_eq!(done["invoices_issued"], 2, "{done}");
    }
    let acme_inv = env.invoice_of("acme", "2026-04-01").await;
    let acme_id = acme_inv["id"].as_str().unwrap();

    // acme reads its own invoice, with lines.
    let own = env
        .ok("billing.tenant.acme.invoices.get", json!({"id": acme_id}))
        .await;
    assert_eq!(
        own, acme_inv,
        "a tenant's view of its invoice is the admin's"
    );

    // globex asking for acme's id is indistinguishable from asking for an id that does not exist.
    let foreign = env
        .fails(
            "billing.tenant.globex.invoices.get",
            json!({"id": acme_id}),
            "not_found",
        )
        .await;
    let missing_id = Uuid::new_v4().to_string();
    let missing = env
        .fails(
            "billing.tenant.globex.invoices.get",
            json!({"id": missing_id}),
            "not_found",
        )
        .await;
    assert_eq!(
        (&foreign.code, &foreign.status),
        (&missing.code, &missing.status)
    );
    assert_eq!(
        foreign.message.replace(acme_id, "<id>"),
        missing.message.replace(&missing_id, "<id>"),
        "the message must not reveal that the invoice exists"
    );
    assert!(!foreign.message.contains("acme"), "{foreign:?}");

    // A tenant_id in a tenant's list payload cannot widen (or move) its scope.
    let acme_all: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM invoices WHERE tenant_id = 'acme'")
            .fetch_all(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(acme_all.len(), 2);
    for filter in [
        json!({"tenant_id": "globex"}),
        json!({}),
        json!({"tenant_id": null}),
    ] {
        let (got, _) = env
            .list_all("billing.tenant.acme.invoices.list", filter.clone(), 500)
            .await;
        assert!(
            got.iter().all(|i| i["tenant_id"] == "acme"),
            "{filter}: {got:?}"
        );
        let mut got = ids(&got);
        got.sort();
        let mut want = acme_all.clone();
        want.sort();
        assert_eq!(got, want, "{filter}: acme lists exactly its own invoices");
    }
    let (globex, _) = env
        .list_all(
            "billing.tenant.globex.invoices.list",
            json!({"tenant_id": "acme"}),
            1,
        )
        .await;
    assert_eq!(globex.len(), 2);
    assert!(
        globex.iter().all(|i| i["tenant_id"] == "globex"),
        "{globex:?}"
    );
    // A cursor from acme's list does not leak acme's invoices into globex's.
    let page = env
        .ok("billing.tenant.acme.invoices.list", json!({"limit": 1}))
        .await;
    let cursor = page["next_cursor"].clone();
    assert!(cursor.is_string(), "{page}");
    let (rest, _) = env
        .list_all(
            "billing.tenant.globex.invoices.list",
            json!({"cursor": cursor}),
            500,
        )
        .await;
    assert!(rest.iter().all(|i| i["tenant_id"] == "globex"), "{rest:?}");

    // A preview is the subject tenant's alone.
    let preview = env
        .ok(
            "billing.tenant.globex.invoices.preview",
            json!({"period_start": "2026-04-01", "tenant_id": "acme"}),
        )
        .await;
    assert_eq!(preview["tenant_id"], "globex");
    let globex_inv = env.invoice_of("globex", "2026-04-01").await;
    assert_eq!(lines_of(&preview), lines_of(&globex_inv));
}

// ---------------------------------------------------------------------------------------------
// 4. Pagination
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_through_every_invoice_exactly_once_newest_period_first() {
    let env = TestApp::with_worker_args(seller_worker()).await;
    load_seed_catalog(&env.client).await;
    let tenants: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    for t in &tenants {
        env.tenant(t).await;
        env.subscribe(t, Uuid::new_v4(), "2026-03-01T00:00:00Z", false)
            .await;
    }
    for period in ["2026-03-01", "2026-04-01"] {
        let done = rollup(&env.js, json!({ "period_start": period })).await;
        assert_eq!(done["invoices_issued"], 7, "{done}");
    }
    // Three March invoices paid, so status filters have something to separate.
    let mut paid = Vec::new();
    for t in &tenants[..3] {
        let id = env.invoice_of(t, "2026-03-01").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        env.ok("billing.admin.invoices.mark_paid", json!({ "id": id }))
            .await;
        paid.push(id);
    }
    paid.sort();
    let mut all: Vec<String> = sqlx::query_scalar("SELECT id::text FROM invoices")
        .fetch_all(&env.db.pool)
        .await
        .unwrap();
    all.sort();
    assert_eq!(all.len(), 14);

    let sorted = |v: &[Value]| {
        let mut v = ids(v);
        v.sort();
        v
    };
    let no_repeats = |v: &[Value]| {
        let unique: BTreeSet<String> = ids(v).into_iter().collect();
        assert_eq!(unique.len(), v.len(), "an invoice was listed twice: {v:?}");
    };
    let newest_first = |v: &[Value]| {
        let periods: Vec<&str> = v
            .iter()
            .map(|i| i["period_start"].as_str().unwrap())
            .collect();
        assert!(
            periods.windows(2).all(|w| w[0] >= w[1]),
            "not newest period first: {periods:?}"
        );
    };

    // Everything, three at a time.
    let (got, pages) = env
        .list_all("billing.admin.invoices.list", json!({}), 3)
        .await;
    assert_eq!(pages, [3, 3, 3, 3, 2]);
    no_repeats(&got);
    newest_first(&got);
    assert_eq!(sorted(&got), all);
    assert!(got[..7].iter().all(|i| i["period_start"] == "2026-04-01"));

    // A page size that divides the total exactly: no empty trailing page.
    let (got, pages) = env
        .list_all("billing.admin.invoices.list", json!({}), 7)
        .await;
    assert_eq!(pages, [7, 7]);
    assert_eq!(sorted(&got), all);

    // One page for all, and the default limit.
    let (got, pages) = env
        .list_all("billing.admin.invoices.list", json!({}), 500)
        .await;
    assert_eq!((pages, sorted(&got)), (vec![14], all.clone()));
    let default = env.ok("billing.admin.invoices.list", json!({})).await;
    assert_eq!(default["invoices"].as_array().unwrap().len(), 14);
    assert_eq!(default["next_cursor"], Value::Null);

    // Status filter.
    let (got, pages) = env
        .list_all("billing.admin.invoices.list", json!({"status": "paid"}), 2)
        .await;
    assert_eq!(pages, [2, 1]);
    assert_eq!(sorted(&got), paid);
    assert!(got
        .iter()
        .all(|i| i["status"] == "paid" && i["period_start"] == "2026-03-01"));
    let (got, _) = env
        .list_all(
            "billing.admin.invoices.list",
            json!({"status": "issued"}),
            3,
        )
        .await;
    assert_eq!(got.len(), 11);
    no_repeats(&got);
    newest_first(&got);
    assert!(got.iter().all(|i| i["status"] == "issued"));
    let (got, pages) = env
        .list_all("billing.admin.invoices.list", json!({"status": "void"}), 3)
        .await;
    assert_eq!((got.len(), pages), (0, vec![0]));

    // Admin tenant filter, alone and with status and period filters.
    let (got, pages) = env
        .list_all("billing.admin.invoices.list", json!({"tenant_id": "t5"}), 1)
        .await;
    assert_eq!(pages, [1, 1]);
    assert_eq!(
        got.iter()
            .map(|i| (
                i["tenant_id"].as_str().unwrap(),
                i["period_start"].as_str().unwrap()
            ))
            .collect::<Vec<_>>(),
        [("t5", "2026-04-01"), ("t5", "2026-03-01")]
    );
    let (got, _) = env
        .list_all(
            "billing.admin.invoices.list",
            json!({"tenant_id": "t0", "status": "issued"}),
            3,
        )
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (
            got[0]["tenant_id"].as_str(),
            got[0]["period_start"].as_str()
        ),
        (Some("t0"), Some("2026-04-01"))
    );
    let (got, _) = env
        .list_all(
            "billing.admin.invoices.list",
            json!({"tenant_id": "t1", "status": "paid"}),
            3,
        )
        .await;
    assert_eq!(
        ids(&got),
        [env.invoice_of("t1", "2026-03-01").await["id"]
            .as_str()
            .unwrap()]
    );
    let (got, pages) = env
        .list_all(
            "billing.admin.invoices.list",
            json!({"period_start": "2026-03-01"}),
            3,
        )
        .await;
    assert_eq!(pages, [3, 3, 1]);
    no_repeats(&got);
    assert!(got.iter().all(|i| i["period_start"] == "2026-03-01"));
    let (got, _) = env
        .list_all(
            "billing.admin.invoices.list",
            json!({"period_start": "2026-03-01", "status": "issued"}),
            3,
        )
        .await;
    assert_eq!(got.len(), 4);

    // The tenant's own list pages the same way.
    let (got, pages) = env
        .list_all("billing.tenant.t3.invoices.list", json!({}), 1)
        .await;
    assert_eq!(pages, [1, 1]);
    newest_first(&got);
    assert!(got.iter().all(|i| i["tenant_id"] == "t3"));
    let (got, pages) = env
        .list_all(
            "billing.tenant.t2.invoices.list",
            json!({"status": "paid"}),
            1,
        )
        .await;
    assert_eq!(
        (pages, got[0]["period_start"].as_str()),
        (vec![1], Some("2026-03-01"))
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Lifecycle transitions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_transitions_follow_the_status_machine_and_announce_themselves() {
    let env = TestApp::with_worker_args(seller_worker()).await;
    load_seed_catalog(&env.client).await;
    for t in ["acme", "globex", "initech"] {
        env.tenant(t).await;
        env.subscribe(t, Uuid::new_v4(), "2026-03-15T00:00:00Z", true)
            .await;
    }
    let done = rollup(
        &env.js,
        json!({"period_start": "2026-04-01", "draft": true}),
    )
    .await;
    assert_eq!(
        (
            done["invoices_drafted"].as_i64(),
            done["invoices_issued"].as_i64()
        ),
        (Some(3), Some(0)),
        "{done}"
    );

    let draft = env.invoice_of("acme", "2026-04-01").await;
    let id = draft["id"].as_str().unwrap().to_string();
    assert_eq!(draft["status"], "draft");
    assert_eq!(
        (&draft["number"], &draft["issued_at"]),
        (&Value::Null, &Value::Null),
        "drafts have no number"
    );
    assert!(
        env.outbox_msg_ids(&id).await.is_empty(),
        "a draft is not announced"
    );

    // draft -> issued: a number, and the whole invoice announced.
    let issued = env
        .ok("billing.admin.invoices.issue", json!({ "id": id }))
        .await;
    assert_eq!(issued["status"], "issued");
    assert_eq!(
        issued["number"], "INV-000001",
        "the first number of a fresh database"
    );
    assert!(issued["issued_at"].is_string(), "{issued}");
    assert_eq!(totals(&issued), totals(&draft), "issuing does not reprice");
    assert_eq!(lines_of(&issued), lines_of(&draft));
    let event = env.event_for("billing.invoice.issued", &id).await;
    assert_eq!(
        event, issued,
        "billing.invoice.issued carries the whole invoice"
    );
    assert_eq!(
        env.ok("billing.admin.invoices.get", json!({ "id": id }))
            .await,
        issued
    );
    env.fails(
        "billing.admin.invoices.issue",
        json!({ "id": id }),
        "conflict",
    )
    .await;

    // A paid_at PostgreSQL cannot store is the caller's mistake, and changes nothing.
    for paid_at in ["-5000-01-01T00:00:00Z", "2026-05-10", "yesterday"] {
        env.fails(
            "billing.admin.invoices.mark_paid",
            json!({"id": id, "paid_at": paid_at}),
            "bad_request",
        )
        .await;
    }
    assert_eq!(
        env.ok("billing.admin.invoices.get", json!({ "id": id }))
            .await,
        issued
    );

    // issued -> paid (at the moment of issue, the earliest paid_at allowed), then paying
    // again returns it unchanged.
    let paid = env
        .ok(
            "billing.admin.invoices.mark_paid",
            json!({"id": id, "paid_at": issued["issued_at"]}),
        )
        .await;
    assert_eq!(
        (paid["status"].as_str(), &paid["paid_at"]),
        (Some("paid"), &issued["issued_at"])
    );
    assert_eq!(
        (&paid["number"], &paid["issued_at"]),
        (&issued["number"], &issued["issued_at"])
    );
    assert_eq!(env.event_for("billing.invoice.paid", &id).await, paid);
    let again = env
        .ok(
            "billing.admin.invoices.mark_paid",
            json!({"id": id, "paid_at": chrono::Utc::now().to_rfc3339()}),
        )
        .await;
    assert_eq!(again, paid, "paying a paid invoice changes nothing");
    assert_eq!(
        env.outbox_msg_ids(&id).await,
        [format!("{id}:issued"), format!("{id}:paid")]
    );

    // Nothing leaves paid.
    let e = env
        .fails(
            "billing.admin.invoices.void",
            json!({ "id": id }),
            "conflict",
        )
        .await;
    assert!(e.message.contains("paid"), "{e:?}");
    env.fails(
        "billing.admin.invoices.issue",
        json!({ "id": id }),
        "conflict",
    )
    .await;
    assert_eq!(
        env.ok("billing.admin.invoices.get", json!({ "id": id }))
            .await,
        paid
    );

    // issued -> void, announced; void is final.
    let globex = env.invoice_of("globex", "2026-04-01").await;
    let gid = globex["id"].as_str().unwrap().to_string();
    let gissued = env
        .ok("billing.admin.invoices.issue", json!({ "id": gid }))
        .await;
    assert_eq!(gissued["number"], "INV-000002", "numbers are sequential");
    for reason in [
        json!("  "),
        json!("x".repeat(501)),
        json!("bad\u{0}reason"),
        json!(42),
    ] {
        env.fails(
            "billing.admin.invoices.void",
            json!({"id": gid, "reason": reason}),
            "bad_request",
        )
        .await;
    }
    assert_eq!(
        env.ok("billing.admin.invoices.get", json!({ "id": gid }))
            .await,
        gissued,
        "a refused void changes nothing"
    );
    let voided = env
        .ok(
            "billing.admin.invoices.void",
            json!({"id": gid, "reason": "customer cancelled"}),
        )
        .await;
    assert_eq!(
        (voided["status"].as_str(), voided["void_reason"].as_str()),
        (Some("void"), Some("customer cancelled"))
    );
    assert!(voided["voided_at"].is_string(), "{voided}");
    assert_eq!(
        voided["number"], gissued["number"],
        "a voided invoice keeps its number"
    );
    assert_eq!(env.event_for("billing.invoice.voided", &gid).await, voided);
    for to in ["void", "issue", "mark_paid"] {
        env.fails(
            &format!("billing.admin.invoices.{to}"),
            json!({ "id": gid }),
            "conflict",
        )
        .await;
    }

    // draft -> void: never announced (it never was), and it cannot be issued afterwards.
    let initech = env.invoice_of("initech", "2026-04-01").await;
    let iid = initech["id"].as_str().unwrap().to_string();
    env.fails(
        "billing.admin.invoices.mark_paid",
        json!({ "id": iid }),
        "conflict",
    )
    .await;
    let ivoid = env
        .ok("billing.admin.invoices.void", json!({ "id": iid }))
        .await;
    assert_eq!(
        (ivoid["status"].as_str(), &ivoid["number"]),
        (Some("void"), &Value::Null)
    );
    assert!(
        ivoid["void_reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{ivoid}"
    );
    env.fails(
        "billing.admin.invoices.issue",
        json!({ "id": iid }),
        "conflict",
    )
    .await;
    assert!(
        env.outbox_msg_ids(&iid).await.is_empty(),
        "a voided draft is not announced"
    );

    // The stream holds exactly one event per announced transition.
    let count = |events: Vec<Value>, id: &str| events.iter().filter(|e| e["id"] == id).count();
    let issued_events = stream_messages(&env.js, "BILLING_EVENTS", "billing.invoice.issued").await;
    assert_eq!(
        (
            count(issued_events.clone(), &id),
            count(issued_events, &gid)
        ),
        (1, 1)
    );
    let voided_events = stream_messages(&env.js, "BILLING_EVENTS", "billing.invoice.voided").await;
    assert_eq!(count(voided_events, &iid), 0);
}

// ---------------------------------------------------------------------------------------------
// 6. Quote = preview = invoice
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_and_quote_price_exactly_what_the_rollup_invoices() {
    let env = TestApp::with_worker_args(seller_worker()).await;
    load_seed_catalog(&env.client).await;
    // acme: the seed scenario, a full April with 2160 droplet-hours.
    // globex: from midday on April 16th (15 of 30 days), 1000 droplet-hours.
    env.tenant("acme").await;
    env.tenant("globex").await;
    let (acme_dep, globex_dep) = (Uuid::new_v4(), Uuid::new_v4());
    env.subscribe("acme", acme_dep, "2026-03-15T00:00:00Z", true)
        .await;
    env.subscribe("globex", globex_dep, "2026-04-16T12:00:00Z", true)
        .await;
    let mut records = usage(acme_dep, 1..31, 3, "24");
    records.extend(usage(globex_dep, 17..27, 1, "100"));
    let n = records.len() as i64;
    publish_usage(&env.js, &env.db, records, n).await;

    let preview_acme = env
        .ok(
            "billing.tenant.acme.invoices.preview",
            json!({"period_start": "2026-04-01"}),
        )
        .await;
    let preview_globex = env
        .ok(
            "billing.tenant.globex.invoices.preview",
            json!({"period_start": "2026-04-01"}),
        )
        .await;
    for p in [&preview_acme, &preview_globex] {
        assert_eq!(
            (
                p["status"].as_str(),
                p["period_start"].as_str(),
                p["period_end"].as_str()
            ),
            (Some("preview"), Some("2026-04-01"), Some("2026-05-01")),
            "{p}"
        );
    }
    let persisted: i64 = sqlx::query_scalar("SELECT count(*) FROM invoices")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(persisted, 0, "a preview is not persisted");

    let done = rollup(&env.js, json!({"period_start": "2026-04-01"})).await;
    assert_eq!(done["invoices_issued"], 2, "{done}");
    let acme = env.invoice_of("acme", "2026-04-01").await;
    let globex = env.invoice_of("globex", "2026-04-01").await;

    // The seed numbers (CONTRACT.md section 9) and the prorated ones.
    assert_eq!(totals(&acme), (6422, 642, 7064));
    // 50.00 × 15/30 + 7.50 × 15/30 + (1000 − 1488 × 15/30) × 0.01 = 25.00 + 3.75 + 2.56
    assert_eq!(totals(&globex), (3131, 313, 3444));
    let kinds = |v: &Value| -> Vec<String> {
        v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| format!("{}={}", l["kind"].as_str().unwrap(), l["amount_cents"]))
            .collect()
    };
    assert_eq!(
        kinds(&acme),
        ["plan_base=5000", "addon=750", "overage=672", "tax=642"]
    );
    assert_eq!(
        kinds(&globex),
        ["plan_base=2500", "addon=375", "overage=256", "tax=313"]
    );

    for (preview, invoice) in [(&preview_acme, &acme), (&preview_globex, &globex)] {
        assert_eq!(
            lines_of(preview),
            lines_of(invoice),
            "preview lines = invoice lines"
        );
        assert_eq!(totals(preview), totals(invoice));
        assert_eq!(preview["currency"], invoice["currency"]);
    }
    // The preview after the rollup is still the same computation.
    let after = env
        .ok(
            "billing.tenant.acme.invoices.preview",
            json!({"period_start": "2026-04-01"}),
        )
        .await;
    assert_eq!(lines_of(&after), lines_of(&acme));

    // billing.quote on projected usage: the same lines, without a deployment.
    let no_deployment = |v: &Value| -> Vec<Value> {
        lines_of(v)
            .into_iter()
            .map(|mut l| {
                l["deployment_id"] = Value::Null;
                l
            })
            .collect()
    };
    let quote = env
        .ok(
            "billing.quote",
            json!({"plan": "studio", "addons": ["storage_50gb"], "usage": {"droplet_hours": "2160"},
                   "period_start": "2026-04-01"}),
        )
        .await;
    assert_eq!(totals(&quote), (6422, 642, 7064), "{quote}");
    assert_eq!(lines_of(&quote), no_deployment(&acme));
    let prorated = env
        .ok(
            "billing.quote",
            json!({"plan": "studio", "addons": ["storage_50gb"], "usage": {"droplet_hours": "1000"},
                   "period_start": "2026-04-01", "active_from": "2026-04-16T12:00:00Z"}),
        )
        .await;
    assert_eq!(totals(&prorated), (3131, 313, 3444), "{prorated}");
    assert_eq!(lines_of(&prorated), no_deployment(&globex));
}

// ---------------------------------------------------------------------------------------------
// 7. Revenue summary
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revenue_summary_adds_up_to_the_invoices() {
    let env = TestApp::with_worker_args(seller_worker()).await;
    load_seed_catalog(&env.client).await;
    let (d1, d2, d3, d4, d5) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    for t in ["acme", "globex", "initech", "drafty"] {
        env.tenant(t).await;
    }
    env.subscribe("acme", d1, "2026-03-01T00:00:00Z", true)
        .await;
    env.subscribe("acme", d2, "2026-03-01T00:00:00Z", false)
        .await;
    env.subscribe("globex", d3, "2026-03-01T00:00:00Z", true)
        .await;
    env.subscribe("initech", d4, "2026-03-01T00:00:00Z", true)
        .await;
    env.subscribe("drafty", d5, "2026-03-01T00:00:00Z", true)
        .await;
    let records = usage(d3, 1..31, 3, "24");
    let n = records.len() as i64;
    publish_usage(&env.js, &env.db, records, n).await;

    // drafty gets a draft, initech's invoice is voided, globex's paid: only issued and paid count.
    let done = rollup(
        &env.js,
        json!({"period_start": "2026-04-01", "draft": true, "tenant_ids": ["drafty"]}),
    )
    .await;
    assert_eq!(done["invoices_drafted"], 1, "{done}");
    let done = rollup(&env.js, json!({"period_start": "2026-04-01"})).await;
    assert_eq!(
        (
            done["invoices_issued"].as_i64(),
            done["invoices_skipped"].as_i64()
        ),
        (Some(3), Some(1)),
        "{done}"
    );
    let initech = env.invoice_of("initech", "2026-04-01").await;
    env.ok(
        "billing.admin.invoices.void",
        json!({"id": initech["id"], "reason": "test"}),
    )
    .await;
    let globex = env.invoice_of("globex", "2026-04-01").await;
    env.ok(
        "billing.admin.invoices.mark_paid",
        json!({"id": globex["id"]}),
    )
    .await;
    let acme = env.invoice_of("acme", "2026-04-01").await;
    let counted = [&acme, &globex];

    let summary = env
        .ok(
            "billing.admin.revenue.summary",
            json!({"period_start": "2026-04-01"}),
        )
        .await;
    assert_eq!(summary["period_start"], "2026-04-01", "{summary}");
    let amount = |e: &Value| e["amount_cents"].as_i64().unwrap_or_else(|| panic!("{e}"));

    // By deployment: exactly the non-tax lines of the counted invoices, per deployment.
    let mut want_dep: BTreeMap<String, i64> = BTreeMap::new();
    for inv in counted {
        for l in inv["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["kind"] != "tax")
        {
            *want_dep
                .entry(l["deployment_id"].as_str().unwrap().to_string())
                .or_default() += amount(l);
        }
    }
    let by_dep = summary["by_deployment"]
        .as_array()
        .unwrap_or_else(|| panic!("{summary}"));
    let got_dep: BTreeMap<String, i64> = by_dep
        .iter()
        .map(|e| {
            assert_eq!(e["currency"], "AUD", "{e}");
            (e["deployment_id"].as_str().unwrap().to_string(), amount(e))
        })
        .collect();
    assert_eq!(
        got_dep.len(),
        by_dep.len(),
        "a deployment listed twice: {summary}"
    );
    assert_eq!(got_dep, want_dep);
    assert_eq!(
        got_dep,
        BTreeMap::from([
            (d1.to_string(), 5750),
            (d2.to_string(), 5000),
            (d3.to_string(), 6422)
        ]),
        "the void and the draft invoices' deployments are not revenue"
    );
    let subtotals: i64 = counted.iter().map(|i| totals(i).0).sum();
    assert_eq!(got_dep.values().sum::<i64>(), subtotals);

    // By resource kind: every line kind; the non-tax ones add up to the subtotals, tax to tax.
    let mut want_kind: BTreeMap<(String, Option<String>), i64> = BTreeMap::new();
    for inv in counted {
        for l in inv["lines"].as_array().unwrap() {
            let key = (
                l["kind"].as_str().unwrap().to_string(),
                l["resource_kind"].as_str().map(str::to_string),
            );
            *want_kind.entry(key).or_default() += amount(l);
        }
    }
    let got_kind: BTreeMap<(String, Option<String>), i64> = summary["by_resource_kind"]
        .as_array()
        .unwrap_or_else(|| panic!("{summary}"))
        .iter()
        .map(|e| {
            let key = (
                e["kind"].as_str().unwrap().to_string(),
                e["resource_kind"].as_str().map(str::to_string),
            );
            (key, amount(e))
        })
        .collect();
    assert_eq!(got_kind, want_kind);
    assert_eq!(
        got_kind,
        BTreeMap::from([
            (("addon".into(), None), 1500),
            (("overage".into(), Some("droplet_hours".into())), 672),
            (("plan_base".into(), None), 15000),
            (("tax".into(), None), 1717),
        ])
    );
    let non_tax: i64 = got_kind
        .iter()
        .filter(|(k, _)| k.0 != "tax")
        .map(|(_, v)| v)
        .sum();
    assert_eq!(non_tax, subtotals);
    let taxes: i64 = counted.iter().map(|i| totals(i).1).sum();
    assert_eq!(got_kind[&("tax".to_string(), None)], taxes);

    // Another period has nothing.
    let empty = env
        .ok(
            "billing.admin.revenue.summary",
            json!({"period_start": "2026-05-01"}),
        )
        .await;
    assert_eq!(
        (&empty["by_deployment"], &empty["by_resource_kind"]),
        (&json!([]), &json!([]))
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_requests_at_once_all_get_their_replies() {
    let env = TestApp::with_worker_args(seller_worker()).await;
    load_seed_catalog(&env.client).await;
    env.tenant("acme").await;
    env.subscribe("acme", Uuid::new_v4(), "2026-03-15T00:00:00Z", true)
        .await;
    let done = rollup(&env.js, json!({"period_start": "2026-04-01"})).await;
    assert_eq!(done["invoices_issued"], 1, "{done}");
    let invoice = env.invoice_of("acme", "2026-04-01").await;
    let id = invoice["id"].as_str().unwrap().to_string();

    // (subject, payload, what the reply must be)
    enum Want {
        Invoice,
        List,
        Quote,
        Preview,
        Error(&'static str),
    }
    let mut requests: Vec<(String, Vec<u8>, Want)> = Vec::new();
    for i in 0..50 {
        let r: (&str, Value, Want) = match i % 7 {
            0 => (
                "billing.tenant.acme.invoices.get",
                json!({ "id": id }),
                Want::Invoice,
            ),
            1 => (
                "billing.admin.invoices.list",
                json!({"limit": 5}),
                Want::List,
            ),
            2 => (
                "billing.quote",
                json!({"plan": "studio", "addons": ["storage_50gb"], "usage": {"droplet_hours": "2160"},
                       "period_start": "2026-04-01"}),
                Want::Quote,
            ),
            3 => (
                "billing.tenant.acme.invoices.preview",
                json!({"period_start": "2026-04-01"}),
                Want::Preview,
            ),
            4 => (
                "billing.tenant.globex.invoices.get",
                json!({ "id": id }),
                Want::Error("not_found"),
            ),
            5 => (
                "billing.admin.invoices.issue",
                json!({ "id": id }),
                Want::Error("conflict"),
            ),
            _ => (
                "billing.admin.invoices.list",
                json!({"limit": 501}),
                Want::Error("bad_request"),
            ),
        };
        requests.push((r.0.to_string(), r.1.to_string().into_bytes(), r.2));
    }
    let replies = join_all(
        requests
            .iter()
            .map(|(subject, payload, _)| env.send(subject, payload.clone())),
    )
    .await;
    assert_eq!(replies.len(), 50);
    for ((subject, _, want), reply) in requests.iter().zip(replies) {
        match want {
            Want::Invoice => assert_eq!(reply.as_ref().unwrap(), &invoice, "{subject}"),
            Want::List => {
                let v = reply.unwrap();
                assert_eq!(
                    ids(v["invoices"].as_array().unwrap()),
                    [id.as_str()],
                    "{subject}: {v}"
                );
            }
            Want::Quote => {
                let v = reply.unwrap();
                assert_eq!(totals(&v), (6422, 642, 7064), "{subject}: {v}");
            }
            Want::Preview => {
                let v = reply.unwrap();
                assert_eq!(lines_of(&v), lines_of(&invoice), "{subject}: {v}");
                assert_eq!(totals(&v), totals(&invoice), "{subject}: {v}");
            }
            Want::Error(code) => {
                expect_error(reply, code, subject);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input the database cannot store must be refused as bad input, not fail as internal.
// ---------------------------------------------------------------------------------------------

/// Catalog input PostgreSQL cannot store (a NUL in text, a year it cannot hold) must be refused
/// as `bad_request`; today it reaches the database and comes back as `internal` (500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstorable_catalog_input_is_a_bad_request() {
    let env = TestApp::with_worker_args(seller_worker()).await;
    load_seed_catalog(&env.client).await;
    let (plan, addon) = invoicer::demo::seed_catalog();
    let sub = json!({"id": Uuid::new_v4(), "tenant_id": "acme", "deployment_id": Uuid::new_v4(),
                     "plan": "studio", "started_at": "2026-03-15T00:00:00Z"});
    let cases = [
        (
            "billing.admin.plans.put",
            with(&plan, "name", json!("Studio\u{0}")),
        ),
        (
            "billing.admin.addons.put",
            with(&addon, "name", json!("\u{0}")),
        ),
        (
            "billing.admin.tenants.put",
            json!({"tenant_id": "acme", "tax_label": "GST\u{0}"}),
        ),
        (
            "billing.admin.subscriptions.put",
            with(&sub, "started_at", json!("-5000-01-01T00:00:00Z")),
        ),
    ];
    let mut wrong = Vec::new();
    for (subject, body) in cases {
        let r = env.call(subject, &body).await;
        wrong.extend(check_error(r, BAD, &format!("{subject} {body}")).err());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
