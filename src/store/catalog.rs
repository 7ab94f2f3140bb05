//! Catalog rows: tenants, plans, add-ons, subscriptions.

use crate::domain::abn::Abn;
use crate::domain::catalog::*;
use crate::domain::grace::GracePeriod;
use crate::error::{Error, Result};
use rust_decimal::Decimal;
use sqlx::{PgExecutor, PgPool, Row};
use std::collections::BTreeMap;

fn tenant_from_row(row: &sqlx::postgres::PgRow) -> Result<Tenant> {
    let id = TenantId::parse(row.try_get("tenant_id")?)?;
    // Checked on the way in; a row edited by hand must not stop the rollup, which reads
    // tenants through here too, so a bad stored ABN is logged and treated as absent.
    let abn = row.try_get::<Option<&str>, _>("abn")?.and_then(|digits| {
        Abn::parse(digits)
            .map_err(|e| tracing::warn!(tenant = %id, error = %e, "ignoring the stored ABN"))
            .ok()
    });
    Ok(Tenant {
        id,
        currency: Currency::parse(row.try_get("currency")?)?,
        tax: TaxPolicy {
            rate: row.try_get("tax_rate")?,
            label: row.try_get("tax_label")?,
            exempt: row.try_get("tax_exempt")?,
        },
        legal: LegalDetails {
            legal_name: row.try_get("legal_name")?,
            abn,
            address: row.try_get("address")?,
        },
        grace_period: row
            .try_get::<Option<&str>, _>("grace_period")?
            .map(|g| {
                GracePeriod::parse(g)
                    .map_err(|e| Error::internal(format!("stored grace_period is invalid: {e}")))
            })
            .transpose()?,
    })
}

pub async fn put_tenant(pool: &PgPool, t: &TenantPut) -> Result<Tenant> {
    // Legal details are patches: ($n: change it?, $n+1: to what, NULL clears).
    let (name_set, name) = t.legal_name.change();
    let (abn_set, abn) = t.abn.change();
    let (address_set, address) = t.address.change();
    let row = sqlx::query(
        "INSERT INTO tenants (tenant_id, currency, tax_rate, tax_label, tax_exempt,
                              legal_name, abn, address, grace_period)
         VALUES ($1, coalesce($2, 'AUD'), coalesce($3, 0.10), coalesce($4, 'GST'), coalesce($5, false),
                 $7, $9, $11, $13)
         ON CONFLICT (tenant_id) DO UPDATE SET
           currency = coalesce($2, tenants.currency),
           tax_rate = coalesce($3, tenants.tax_rate),
           tax_label = coalesce($4, tenants.tax_label),
           tax_exempt = coalesce($5, tenants.tax_exempt),
           legal_name = CASE WHEN $6 THEN $7 ELSE tenants.legal_name END,
           abn = CASE WHEN $8 THEN $9 ELSE tenants.abn END,
           address = CASE WHEN $10 THEN $11 ELSE tenants.address END,
           grace_period = CASE WHEN $12 THEN $13 ELSE tenants.grace_period END,
           updated_at = now()
         RETURNING *",
    )
    .bind(t.tenant_id.as_str())
    .bind(t.currency.as_ref().map(|c| c.as_str()))
    .bind(t.tax_rate)
    .bind(t.tax_label.as_deref())
    .bind(t.tax_exempt)
    .bind(name_set)
    .bind(name)
    .bind(abn_set)
    .bind(abn.map(|a| a.digits()))
    .bind(address_set)
    .bind(address)
    .bind(t.grace_period.is_some())
    .bind(t.grace_period.clone().flatten().map(|g| g.to_string()))
    .fetch_one(pool)
    .await?;
    tenant_from_row(&row)
}

/// The answer to a request naming a tenant that `tenants.put` never created.
pub fn unknown_tenant(id: &TenantId) -> Error {
    Error::NotFound(format!(
        "unknown tenant {:?} (create it with billing.admin.tenants.put first)",
        id.as_str()
    ))
}

pub async fn tenant(db: impl PgExecutor<'_>, id: &TenantId) -> Result<Option<Tenant>> {
    sqlx::query("SELECT * FROM tenants WHERE tenant_id = $1")
        .bind(id.as_str())
        .fetch_optional(db)
        .await?
        .map(|r| tenant_from_row(&r))
        .transpose()
}

/// Locks and loads the given tenants in id order (a fixed order, so batches cannot deadlock).
pub async fn lock_tenants(db: impl PgExecutor<'_>, ids: &[String]) -> Result<Vec<Tenant>> {
    sqlx::query("SELECT * FROM tenants WHERE tenant_id = ANY($1) ORDER BY tenant_id FOR UPDATE")
        .bind(ids)
        .fetch_all(db)
        .await?
        .iter()
        .map(tenant_from_row)
        .collect()
}

pub async fn put_plan(pool: &PgPool, p: &Plan) -> Result<()> {
    let overage: BTreeMap<&String, StoredOverage> =
        p.overage.iter().map(|(k, v)| (k, v.into())).collect();
    let included: BTreeMap<&String, String> =
        p.included.iter().map(|(k, v)| (k, v.to_string())).collect();
    sqlx::query(
        "INSERT INTO plans (code, name, currency, base_price, included, overage, proration)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (code) DO UPDATE SET name = $2, currency = $3, base_price = $4,
           included = $5, overage = $6, proration = $7, updated_at = now()",
    )
    .bind(&p.code)
    .bind(&p.name)
    .bind(p.currency.as_str())
    .bind(p.base_price)
    .bind(sqlx::types::Json(included))
    .bind(sqlx::types::Json(overage))
    .bind(match p.proration {
        Proration::Daily => "daily",
        Proration::None => "none",
    })
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn put_addon(pool: &PgPool, a: &Addon) -> Result<()> {
    sqlx::query(
        "INSERT INTO addons (code, name, currency, price, resource_kind) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (code) DO UPDATE SET name = $2, currency = $3, price = $4,
           resource_kind = $5, updated_at = now()",
    )
    .bind(&a.code)
    .bind(&a.name)
    .bind(a.currency.as_str())
    .bind(a.price)
    .bind(a.resource_kind.as_deref())
    .execute(pool)
    .await?;
    Ok(())
}

/// Upserts a subscription with its add-ons. The tenant, the plan and the add-ons must exist, and
/// a deployment may not have two subscriptions whose windows overlap (usage must have one owner).
/// A subscription never creates its tenant (CONTRACT.md section 3, v3): a typo in a tenant id
/// would otherwise be a new tenant, billed every month.
pub async fn put_subscription(pool: &PgPool, s: &Subscription) -> Result<()> {
    let mut tx = pool.begin().await?;
    let tenant_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE tenant_id = $1)")
            .bind(s.tenant_id.as_str())
            .fetch_one(&mut *tx)
            .await?;
    if !tenant_exists {
        return Err(unknown_tenant(&s.tenant_id));
    }
    // Serialise puts for one deployment so the overlap check below cannot race.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(s.deployment_id)
        .execute(&mut *tx)
        .await?;
    let plan_exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM plans WHERE code = $1)")
            .bind(&s.plan)
            .fetch_one(&mut *tx)
            .await?;
    if !plan_exists {
        return Err(Error::bad(format!("unknown plan {:?}", s.plan)));
    }
    let known: Vec<String> = sqlx::query_scalar("SELECT code FROM addons WHERE code = ANY($1)")
        .bind(&s.addons)
        .fetch_all(&mut *tx)
        .await?;
    if let Some(missing) = s.addons.iter().find(|a| !known.contains(a)) {
        return Err(Error::bad(format!("unknown addon {missing:?}")));
    }
    let overlapping: Option<uuid::Uuid> = sqlx::query_scalar(
        "SELECT id FROM subscriptions WHERE deployment_id = $1 AND id <> $2
           AND started_at < coalesce($4, 'infinity') AND coalesce(ended_at, 'infinity') > $3
         LIMIT 1",
    )
    .bind(s.deployment_id)
    .bind(s.id)
    .bind(s.started_at)
    .bind(s.ended_at)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(other) = overlapping {
        return Err(Error::bad(format!(
            "deployment {} already has subscription {other} in that window",
            s.deployment_id
        )));
    }
    sqlx::query(
        "INSERT INTO subscriptions (id, tenant_id, deployment_id, plan_code, started_at, ended_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (id) DO UPDATE SET tenant_id = $2, deployment_id = $3, plan_code = $4,
           started_at = $5, ended_at = $6, updated_at = now()",
    )
    .bind(s.id)
    .bind(s.tenant_id.as_str())
    .bind(s.deployment_id)
    .bind(&s.plan)
    .bind(s.started_at)
    .bind(s.ended_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM subscription_addons WHERE subscription_id = $1")
        .bind(s.id)
        .execute(&mut *tx)
        .await?;
    let positions: Vec<i32> = (0..s.addons.len() as i32).collect();
    sqlx::query(
        "INSERT INTO subscription_addons (subscription_id, addon_code, position)
         SELECT $1, * FROM unnest($2::text[], $3::int[])",
    )
    .bind(s.id)
    .bind(&s.addons)
    .bind(&positions)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One resource kind's overage price as the `plans.overage` JSONB column stores it: the
/// contract's shape (`{"unit_price"}` or `{"mode", "tiers"}`) with exact decimal strings. The
/// store owns it, so the storage format changes only with a migration, never with the wire.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredOverage {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    unit_price: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tiers: Option<Vec<StoredTier>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredTier {
    #[serde(default, with = "rust_decimal::serde::str_option")]
    up_to: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    unit_price: Decimal,
}

impl From<&OveragePrice> for StoredOverage {
    fn from(o: &OveragePrice) -> Self {
        match o {
            OveragePrice::PerUnit(p) => StoredOverage {
                unit_price: Some(*p),
                mode: None,
                tiers: None,
            },
            OveragePrice::Tiered { mode, tiers } => StoredOverage {
                unit_price: None,
                mode: Some(
                    match mode {
                        TierMode::Graduated => "graduated",
                        TierMode::Volume => "volume",
                    }
                    .into(),
                ),
                tiers: Some(
                    tiers
                        .iter()
                        .map(|t| StoredTier {
                            up_to: t.up_to,
                            unit_price: t.unit_price,
                        })
                        .collect(),
                ),
            },
        }
    }
}

impl TryFrom<StoredOverage> for OveragePrice {
    type Error = String;
    fn try_from(o: StoredOverage) -> std::result::Result<Self, String> {
        match (o.unit_price, o.mode.as_deref(), o.tiers) {
            (Some(p), None, None) => Ok(OveragePrice::PerUnit(p)),
            (None, Some(mode), Some(tiers)) => {
                let mode = match mode {
                    "graduated" => TierMode::Graduated,
                    "volume" => TierMode::Volume,
                    other => return Err(format!("overage mode {other:?}")),
                };
                let tiers = tiers
                    .into_iter()
                    .map(|t| Tier {
                        up_to: t.up_to,
                        unit_price: t.unit_price,
                    })
                    .collect();
                OveragePrice::tiered(mode, tiers).map_err(|e| e.to_string())
            }
            _ => Err("overage is neither a unit price nor tiers".into()),
        }
    }
}

fn plan_from_row(row: &sqlx::postgres::PgRow) -> Result<Plan> {
    let included: sqlx::types::Json<BTreeMap<String, String>> = row.try_get("included")?;
    let overage: sqlx::types::Json<BTreeMap<String, StoredOverage>> = row.try_get("overage")?;
    let corrupt = |e: String| Error::internal(format!("stored plan is invalid: {e}"));
    let included = included
        .0
        .into_iter()
        .map(|(k, v)| Ok((k, v.parse::<Decimal>().map_err(|e| corrupt(e.to_string()))?)))
        .collect::<Result<_>>()?;
    let overage = overage
        .0
        .into_iter()
        .map(|(k, v)| Ok((k, OveragePrice::try_from(v).map_err(corrupt)?)))
        .collect::<Result<_>>()?;
    Ok(Plan {
        code: row.try_get("code")?,
        name: row.try_get("name")?,
        currency: Currency::parse(row.try_get("currency")?)?,
        base_price: row.try_get("base_price")?,
        included,
        overage,
        proration: match row.try_get::<&str, _>("proration")? {
            "none" => Proration::None,
            _ => Proration::Daily,
        },
    })
}

fn addon_from_row(row: &sqlx::postgres::PgRow) -> Result<Addon> {
    Ok(Addon {
        code: row.try_get("code")?,
        name: row.try_get("name")?,
        currency: Currency::parse(row.try_get("currency")?)?,
        price: row.try_get("price")?,
        resource_kind: row.try_get("resource_kind")?,
    })
}

/// Loads the plans and add-ons with the given codes.
pub async fn load_catalog(
    db: &mut sqlx::PgConnection,
    plan_codes: &[String],
    addon_codes: &[String],
) -> Result<Catalog> {
    let mut catalog = Catalog::default();
    for row in sqlx::query("SELECT * FROM plans WHERE code = ANY($1)")
        .bind(plan_codes)
        .fetch_all(&mut *db)
        .await?
    {
        let plan = plan_from_row(&row)?;
        catalog.plans.insert(plan.code.clone(), plan);
    }
    for row in sqlx::query("SELECT * FROM addons WHERE code = ANY($1)")
        .bind(addon_codes)
        .fetch_all(&mut *db)
        .await?
    {
        let addon = addon_from_row(&row)?;
        catalog.addons.insert(addon.code.clone(), addon);
    }
    Ok(catalog)
}
