//! The benchmark's data set, generated inside PostgreSQL (fast, and no rows cross the wire):
//! N tenants, each with three deployments on plan Studio with add-on storage_50gb, and a daily
//! usage record per deployment and resource kind for every day of April 2026, enough to go over
//! the allowance on both kinds. A tenant's invoice then has 3 × 4 lines plus GST: 13 lines.

use crate::domain::period::Period;
use sqlx::PgPool;

pub const DEPLOYMENTS_PER_TENANT: i64 = 3;
pub const DAYS: i64 = 30;
/// Resource kinds metered per deployment, each with its daily quantity.
pub const KINDS: [(&str, &str); 2] = [("droplet_hours", "72"), ("gb_hours", "30")];

pub fn period() -> Period {
    Period::parse_month("2026-04").expect("a month")
}

/// Lines on each tenant's invoice.
pub fn lines_per_tenant() -> i64 {
    DEPLOYMENTS_PER_TENANT * (2 + KINDS.len() as i64) + 1
}

pub fn usage_rows(tenants: i64) -> i64 {
    tenants * DEPLOYMENTS_PER_TENANT * DAYS * KINDS.len() as i64
}

/// Writes the catalog, tenants, subscriptions and usage. Indexes on usage are dropped during the
/// load and rebuilt after it, then everything is vacuumed and analysed, as a table that has
/// been filling up all month would be.
pub async fn generate(pool: &PgPool, tenants: i64) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let statements = [
        r#"INSERT INTO plans (code, name, currency, base_price, included, overage)
           VALUES ('studio', 'Studio', 'AUD', 50.00,
                   '{"droplet_hours": "1488", "gb_hours": "720"}',
                   '{"droplet_hours": {"unit_price": "0.01"}, "gb_hours": {"unit_price": "0.002"}}')"#
            .to_string(),
        "INSERT INTO addons (code, name, currency, price) VALUES ('storage_50gb', 'storage_50gb', 'AUD', 7.50)"
            .to_string(),
        format!(
            "INSERT INTO tenants (tenant_id) SELECT 't' || lpad(i::text, 7, '0') FROM generate_series(1, {tenants}) i"
        ),
        format!(
            "INSERT INTO subscriptions (id, tenant_id, deployment_id, plan_code, started_at)
             SELECT md5('sub-' || i || '-' || d)::uuid, 't' || lpad(i::text, 7, '0'),
                    md5('dep-' || i || '-' || d)::uuid, 'studio', '2026-03-01T00:00:00Z'
             FROM generate_series(1, {tenants}) i, generate_series(1, {DEPLOYMENTS_PER_TENANT}) d"
        ),
        "INSERT INTO subscription_addons (subscription_id, addon_code, position)
         SELECT id, 'storage_50gb', 0 FROM subscriptions"
            .to_string(),
        "DROP INDEX IF EXISTS usage_records_deployment_time".to_string(),
        "DROP INDEX IF EXISTS usage_records_time".to_string(),
        format!(
            "INSERT INTO usage_records (event_id, deployment_id, resource_kind, quantity, occurred_at)
             SELECT gen_random_uuid(), s.deployment_id, k.kind, k.qty,
                    timestamptz '2026-04-01T00:00:00Z' + make_interval(days => day::int) + interval '12 hours'
             FROM subscriptions s, generate_series(0, {}) day,
                  (VALUES {}) AS k(kind, qty)",
            DAYS - 1,
            KINDS
                .iter()
                .map(|(k, q)| format!("('{k}', {q}::numeric)"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ];
    for sql in statements {
        sqlx::query(&sql).execute(&mut *conn).await?;
    }
    // Recreate whatever usage indexes the current schema defines, from its own migration text.
    for index in usage_indexes() {
        sqlx::query(&index).execute(&mut *conn).await?;
    }
    sqlx::query("VACUUM ANALYZE").execute(&mut *conn).await?;
    Ok(())
}

/// The `CREATE INDEX ... ON usage_records` statements of the embedded migrations, in order.
fn usage_indexes() -> Vec<String> {
    crate::store::MIGRATOR
        .iter()
        .flat_map(|m| m.sql.split(';').map(str::trim).map(str::to_string))
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| s.contains("INDEX") && s.contains("ON usage_records"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_of_the_data_set() {
        assert_eq!(lines_per_tenant(), 13);
        assert_eq!(usage_rows(100_000), 18_000_000);
        let indexes = usage_indexes();
        assert!(
            indexes
                .iter()
                .any(|i| i.contains("usage_records_deployment_time")),
            "{indexes:?}"
        );
    }
}
