//! The quote engine alone, on one core: what `billing.quote` computes for one subscription of
//! the benchmark's plan (base, add-on, overage on two resource kinds, GST).

use crate::domain::catalog::{
    Addon, Catalog, Currency, OveragePrice, Plan, Proration, Subscription, Tenant, TenantId,
};
use crate::domain::quote::{quote_tenant, MeteredSubscription};
use rust_decimal::Decimal;
use std::time::{Duration, Instant};

/// The benchmark's plan, add-on and one metered subscription, as the quote engine takes them.
pub fn sample() -> (Tenant, Catalog, Vec<MeteredSubscription>) {
    let dec = |s: &str| s.parse::<Decimal>().expect("decimal");
    let plan = Plan {
        code: "studio".into(),
        name: "Studio".into(),
        currency: Currency::aud(),
        base_price: dec("50.00"),
        included: [
            ("droplet_hours".to_string(), dec("1488")),
            ("gb_hours".to_string(), dec("720")),
        ]
        .into(),
        overage: [
            (
                "droplet_hours".to_string(),
                OveragePrice::PerUnit(dec("0.01")),
            ),
            ("gb_hours".to_string(), OveragePrice::PerUnit(dec("0.002"))),
        ]
        .into(),
        proration: Proration::Daily,
    };
    let addon = Addon {
        code: "storage_50gb".into(),
        name: "storage_50gb".into(),
        currency: Currency::aud(),
        price: dec("7.50"),
        resource_kind: None,
    };
    let tenant = Tenant::with_defaults(TenantId::parse("quote").expect("token"));
    let mut catalog = Catalog::default();
    catalog.plans.insert(plan.code.clone(), plan);
    catalog.addons.insert(addon.code.clone(), addon);
    let sub = MeteredSubscription {
        subscription: Subscription {
            id: uuid::Uuid::nil(),
            tenant_id: tenant.id.clone(),
            deployment_id: uuid::Uuid::nil(),
            plan: "studio".into(),
            addons: vec!["storage_50gb".into()],
            started_at: "2026-03-01T00:00:00Z".parse().expect("time"),
            ended_at: None,
        },
        usage: [
            ("droplet_hours".to_string(), dec("2160")),
            ("gb_hours".to_string(), dec("900")),
        ]
        .into(),
        next_from: None,
    };
    (tenant, catalog, vec![sub])
}

/// Quotes for about two seconds on this thread; returns (quotes, elapsed).
pub fn run() -> (i64, Duration) {
    let (tenant, catalog, subs) = sample();
    let period = super::fixture::period();
    let started = Instant::now();
    let mut n = 0i64;
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..1000 {
            let q = quote_tenant(&tenant, &subs, &catalog, period).expect("the sample prices");
            std::hint::black_box(q);
        }
        n += 1000;
    }
    (n, started.elapsed())
}
