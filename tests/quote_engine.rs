//! Every pricing rule of CONTRACT.md section 4, table-driven, and the engine's invariants as
//! property tests. Pure: no services needed.

use chrono::{DateTime, Datelike, Utc};
use invoicer::catalog::*;
use invoicer::invoice::LineKind;
use invoicer::money::parse_decimal;
use invoicer::period::Period;
use invoicer::quote::*;
use proptest::prelude::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use uuid::Uuid;

fn d(s: &str) -> Decimal {
    parse_decimal(s).unwrap()
}

fn ts(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn studio() -> Plan {
    Plan {
        code: "studio".into(),
        name: "Studio".into(),
        currency: Currency::aud(),
        base_price: d("50.00"),
        included: [("droplet_hours".to_string(), d("1488"))].into(),
        overage: [(
            "droplet_hours".to_string(),
            OveragePrice::PerUnit(d("0.01")),
        )]
        .into(),
        proration: Proration::Daily,
    }
    .validate()
    .unwrap()
}

fn storage() -> Addon {
    Addon {
        code: "storage_50gb".into(),
        name: "storage_50gb".into(),
        currency: Currency::aud(),
        price: d("7.50"),
        resource_kind: None,
    }
}

fn usage(pairs: &[(&str, &str)]) -> BTreeMap<String, Decimal> {
    pairs.iter().map(|(k, v)| (k.to_string(), d(v))).collect()
}

fn april() -> Period {
    Period::parse_month("2026-04").unwrap()
}

struct Case<'a> {
    plan: Plan,
    addons: Vec<Addon>,
    usage: BTreeMap<String, Decimal>,
    from: &'a str,
    to: Option<&'a str>,
    /// When the deployment's next subscription begins.
    next: Option<&'a str>,
}

impl Case<'_> {
    fn quote(&self) -> Result<SubscriptionQuote, QuoteError> {
        let addons: Vec<&Addon> = self.addons.iter().collect();
        quote_subscription(&SubscriptionInput {
            deployment_id: Some(Uuid::nil()),
            plan: &self.plan,
            addons: &addons,
            usage: &self.usage,
            period: april(),
            active_from: ts(self.from),
            active_to: self.to.map(ts),
            next_from: self.next.map(ts),
            currency: &Currency::aud(),
        })
    }

    fn amounts(&self) -> Vec<(LineKind, i64)> {
        self.quote()
            .unwrap()
            .lines
            .iter()
            .map(|l| (l.kind, l.amount_cents))
            .collect()
    }
}

fn case(plan: Plan, u: &[(&str, &str)]) -> Case<'static> {
    Case {
        plan,
        addons: vec![],
        usage: usage(u),
        from: "2026-01-01T00:00:00Z",
        to: None,
        next: None,
    }
}

#[test]
fn seed_scenario_to_the_cent() {
    let mut c = case(studio(), &[("droplet_hours", "2160")]);
    c.addons = vec![storage()];
    let sub = c.quote().unwrap();
    let q = finish(sub.lines, &TaxPolicy::default()).unwrap();
    let got: Vec<_> = q
        .lines
        .iter()
        .map(|l| {
            (
                l.kind,
                l.description.as_str(),
                l.quantity.to_string(),
                l.unit_price.map(|p| p.to_string()),
                l.amount_cents,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                LineKind::PlanBase,
                "Plan: Studio",
                "1".into(),
                Some("50.00".into()),
                5000
            ),
            (
                LineKind::Addon,
                "Addon: storage_50gb",
                "1".into(),
                Some("7.50".into()),
                750
            ),
            (
                LineKind::Overage,
                "Overage: droplet_hours (672 × $0.01)",
                "672".into(),
                Some("0.01".into()),
                672
            ),
            (
                LineKind::Tax,
                "GST 10%",
                "64.22".into(),
                Some("0.10".into()),
                642
            ),
        ]
    );
    assert_eq!(
        (q.subtotal_cents, q.tax_cents, q.total_cents),
        (6422, 642, 7064)
    );
    assert_eq!(q.lines[3].deployment_id, None);
    assert_eq!(q.lines[2].resource_kind.as_deref(), Some("droplet_hours"));
}

#[test]
fn usage_within_allowance_has_no_overage_line() {
    for used in ["0", "1000", "1488"] {
        let c = case(studio(), &[("droplet_hours", used)]);
        assert_eq!(c.amounts(), vec![(LineKind::PlanBase, 5000)], "{used}");
    }
    let c = case(studio(), &[("droplet_hours", "1488.5")]);
    // 0.5 h × 1c = 0.5c rounds half away from zero to 1c.
    assert_eq!(c.amounts()[1], (LineKind::Overage, 1));
}

#[test]
fn daily_proration_scales_base_addons_and_allowance() {
    // Active from the 16th: 15 of 30 days. Base 25.00, addon 3.75, allowance 744.
    let mut c = case(studio(), &[("droplet_hours", "800")]);
    c.addons = vec![storage()];
    c.from = "2026-04-16T09:30:00Z";
    let q = c.quote().unwrap();
    assert_eq!(
        q.lines.iter().map(|l| l.amount_cents).collect::<Vec<_>>(),
        vec![2500, 375, 56]
    );
    assert_eq!(q.lines[0].description, "Plan: Studio (15 of 30 days)");
    // A prorated charge is one unit at the prorated price (the days are in the description).
    assert_eq!(
        (q.lines[0].quantity, q.lines[0].unit_price),
        (d("1"), Some(d("25.00")))
    );
    assert_eq!(q.lines[1].unit_price, Some(d("3.75")));
    assert_eq!(q.lines[2].quantity, d("56"));
}

#[test]
fn proration_over_a_31_day_month_rounds_once_from_the_exact_fraction() {
    let plan = studio();
    let may = Period::parse_month("2026-05").unwrap();
    // 10 of 31 days of 50.00 = 16.129032... → 16.13
    let q = quote_subscription(&SubscriptionInput {
        deployment_id: None,
        plan: &plan,
        addons: &[],
        usage: &BTreeMap::new(),
        period: may,
        active_from: ts("2026-05-22T00:00:00Z"),
        active_to: None,
        next_from: None,
        currency: &Currency::aud(),
    })
    .unwrap();
    assert_eq!(q.lines[0].amount_cents, 1613);
}

#[test]
fn proration_none_bills_the_full_price() {
    let mut plan = studio();
    plan.proration = Proration::None;
    let mut c = case(plan, &[("droplet_hours", "1500")]);
    c.from = "2026-04-29T00:00:00Z";
    // Full allowance too: 1500 - 1488 = 12 h.
    assert_eq!(
        c.amounts(),
        vec![(LineKind::PlanBase, 5000), (LineKind::Overage, 12)]
    );
}

#[test]
fn subscription_ending_mid_period_and_inactive_subscription() {
    let mut c = case(studio(), &[]);
    c.from = "2026-03-01T00:00:00Z";
    c.to = Some("2026-04-11T00:00:00Z");
    assert_eq!(c.amounts(), vec![(LineKind::PlanBase, 1667)]); // 10/30 of 50 = 16.666..
    c.to = Some("2026-04-01T00:00:00Z");
    assert!(matches!(c.quote(), Err(QuoteError::NotActive(_))));
}

fn pro() -> Plan {
    let mut pro = studio();
    pro.code = "pro".into();
    pro.name = "Pro".into();
    pro.base_price = d("90.00");
    pro
}

#[test]
fn plan_change_mid_period_quotes_each_window() {
    // Studio until the 10th 12:00, then Pro: day 10 is charged once, to Pro (v2).
    let mut a = case(studio(), &[]);
    a.to = Some("2026-04-10T12:00:00Z");
    a.next = Some("2026-04-10T12:00:00Z");
    let mut b = case(pro(), &[]);
    b.from = "2026-04-10T12:00:00Z";
    assert_eq!(a.amounts(), vec![(LineKind::PlanBase, 1500)]); // 9/30 of 50
    assert_eq!(b.amounts(), vec![(LineKind::PlanBase, 6300)]); // 21/30 of 90
    assert_eq!(
        a.quote().unwrap().lines[0].description,
        "Plan: Studio (9 of 30 days)"
    );
    // The same window ending without a successor (a cancellation) keeps its last day.
    a.next = None;
    assert_eq!(a.amounts(), vec![(LineKind::PlanBase, 1667)]); // 10/30 of 50
}

fn subscription(plan: &str, from: &str, to: Option<&str>, deployment: Uuid) -> Subscription {
    Subscription {
        id: Uuid::new_v4(),
        tenant_id: TenantId::parse("acme").unwrap(),
        deployment_id: deployment,
        plan: plan.into(),
        addons: vec!["storage_50gb".into()],
        started_at: ts(from),
        ended_at: to.map(ts),
    }
}

fn catalog_of(plans: Vec<Plan>) -> Catalog {
    let mut c = Catalog::default();
    for p in plans {
        c.plans.insert(p.code.clone(), p);
    }
    c.addons.insert("storage_50gb".into(), storage());
    c
}

#[test]
fn plan_change_at_noon_on_the_16th_of_a_30_day_month_splits_it_15_and_15() {
    let dep = Uuid::new_v4();
    let subs = [
        subscription(
            "studio",
            "2026-01-01T00:00:00Z",
            Some("2026-04-16T12:00:00Z"),
            dep,
        ),
        subscription("pro", "2026-04-16T12:00:00Z", None, dep),
    ]
    .map(|subscription| MeteredSubscription {
        subscription,
        next_from: None,
        // 800 h before the change and 800 after, each against half an allowance of 1488.
        usage: usage(&[("droplet_hours", "800")]),
    });
    let tenant = Tenant::with_defaults(TenantId::parse("acme").unwrap());
    let q = quote_tenant(&tenant, &subs, &catalog_of(vec![studio(), pro()]), april())
        .unwrap()
        .quote;
    let got: Vec<(&str, String, i64)> = q
        .lines
        .iter()
        .map(|l| {
            (
                l.description.as_str(),
                l.quantity.to_string(),
                l.amount_cents,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("Plan: Studio (15 of 30 days)", "1".into(), 2500),
            ("Addon: storage_50gb (15 of 30 days)", "1".into(), 375),
            ("Overage: droplet_hours (56 × $0.01)", "56".into(), 56),
            ("Plan: Pro (15 of 30 days)", "1".into(), 4500),
            ("Addon: storage_50gb (15 of 30 days)", "1".into(), 375),
            ("Overage: droplet_hours (56 × $0.01)", "56".into(), 56),
            ("GST 10%", "78.62".into(), 786),
        ]
    );
    // In the order the store lists them or not, the result is the same.
    let mut reversed = subs.clone();
    reversed.reverse();
    let again = quote_tenant(
        &tenant,
        &reversed,
        &catalog_of(vec![studio(), pro()]),
        april(),
    )
    .unwrap()
    .quote;
    assert_eq!(again.total_cents, q.total_cents);
}

#[test]
fn a_deployment_handed_to_another_tenant_cedes_the_handover_day() {
    // Alpha hands the deployment over at noon on the 16th; the next subscription is another
    // tenant's, so it is not quoted here: its start comes in as data (the store's lookup).
    let dep = Uuid::new_v4();
    let handover = "2026-04-16T12:00:00Z";
    let catalog = catalog_of(vec![studio()]);
    let tenant = Tenant::with_defaults(TenantId::parse("alpha").unwrap());
    let base_of = |next_from: Option<&str>| {
        let m = MeteredSubscription {
            subscription: subscription("studio", "2026-01-01T00:00:00Z", Some(handover), dep),
            usage: BTreeMap::new(),
            next_from: next_from.map(ts),
        };
        let q = quote_tenant(&tenant, &[m], &catalog, april())
            .unwrap()
            .quote;
        (q.lines[0].description.clone(), q.lines[0].amount_cents)
    };
    // Handed over that day: the 16th is the next holder's.
    assert_eq!(
        base_of(Some(handover)),
        ("Plan: Studio (15 of 30 days)".to_string(), 2500)
    );
    assert_eq!(
        base_of(Some("2026-04-16T20:00:00Z")),
        ("Plan: Studio (15 of 30 days)".to_string(), 2500)
    );
    // No successor, or one from the next day: the 16th stays alpha's.
    for next in [None, Some("2026-04-17T00:00:00Z")] {
        assert_eq!(
            base_of(next),
            ("Plan: Studio (16 of 30 days)".to_string(), 2667),
            "{next:?}"
        );
    }
}

#[test]
fn a_subscription_whose_only_day_went_to_the_next_bills_its_usage_but_no_base() {
    let dep = Uuid::new_v4();
    let subs = [
        subscription(
            "studio",
            "2026-01-01T00:00:00Z",
            Some("2026-04-10T08:00:00Z"),
            dep,
        ),
        subscription(
            "pro",
            "2026-04-10T08:00:00Z",
            Some("2026-04-10T16:00:00Z"),
            dep,
        ),
        subscription("studio", "2026-04-10T16:00:00Z", None, dep),
    ]
    .map(|subscription| MeteredSubscription {
        subscription,
        next_from: None,
        usage: usage(&[("droplet_hours", "10")]),
    });
    let tenant = Tenant::with_defaults(TenantId::parse("acme").unwrap());
    let q = quote_tenant(&tenant, &subs, &catalog_of(vec![studio(), pro()]), april())
        .unwrap()
        .quote;
    let base: Vec<(&str, i64)> = q
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::PlanBase)
        .map(|l| (l.description.as_str(), l.amount_cents))
        .collect();
    // Days 1-9 on Studio, day 10 to the last subscription (Studio again), 21 days in all.
    assert_eq!(
        base,
        vec![
            ("Plan: Studio (9 of 30 days)", 1500),
            ("Plan: Pro (0 of 30 days)", 0),
            ("Plan: Studio (21 of 30 days)", 3500),
        ]
    );
    // Pro's 8 hours have no allowance left: its 10 droplet-hours are all overage.
    let pro_overage = q
        .lines
        .iter()
        .find(|l| l.kind == LineKind::Overage)
        .map(|l| l.amount_cents);
    assert_eq!(pro_overage, Some(10));
}

#[test]
fn sub_cent_unit_prices() {
    let mut plan = studio();
    plan.included.clear();
    plan.overage = [("gb_hours".to_string(), OveragePrice::PerUnit(d("0.0035")))].into();
    // In cents: 1 → 0.35, 2 → 0.7, 10 → 3.5 (half: away from zero), 1428.5 → 499.975.
    let cases = [
        ("1", 0),
        ("2", 1),
        ("10", 4),
        ("1000", 350),
        ("1428.5", 500),
    ];
    for (used, cents) in cases {
        let c = case(plan.clone(), &[("gb_hours", used)]);
        assert_eq!(c.amounts()[1], (LineKind::Overage, cents), "{used}");
    }
    let c = case(plan, &[("gb_hours", "1000")]);
    assert_eq!(
        c.quote().unwrap().lines[1].description,
        "Overage: gb_hours (1000 × $0.0035)"
    );
}

fn tiers(mode: TierMode) -> OveragePrice {
    OveragePrice::tiered(
        mode,
        vec![
            Tier {
                up_to: Some(d("1000")),
                unit_price: d("0.01"),
            },
            Tier {
                up_to: Some(d("5000")),
                unit_price: d("0.008"),
            },
            Tier {
                up_to: None,
                unit_price: d("0.005"),
            },
        ],
    )
    .unwrap()
}

#[test]
fn graduated_tiers_price_each_slice() {
    let mut plan = studio();
    plan.overage = [("droplet_hours".to_string(), tiers(TierMode::Graduated))].into();
    let cases = [
        // (usage, overage quantity, cents)
        ("2488", "1000", 1000),
        ("3488", "2000", 1800),
        ("7488", "6000", 4700),
        ("1500", "12", 12),
    ];
    for (used, qty, cents) in cases {
        let c = case(plan.clone(), &[("droplet_hours", used)]);
        let line = c.quote().unwrap().lines[1].clone();
        assert_eq!(
            (line.quantity, line.amount_cents),
            (d(qty), cents),
            "{used}"
        );
        assert_eq!(line.unit_price, None);
    }
    let c = case(plan, &[("droplet_hours", "3488")]);
    assert_eq!(
        c.quote().unwrap().lines[1].description,
        "Overage: droplet_hours (1000 × $0.01 + 1000 × $0.008)"
    );
}

#[test]
fn volume_tiers_price_everything_at_the_reached_tier() {
    let mut plan = studio();
    plan.overage = [("droplet_hours".to_string(), tiers(TierMode::Volume))].into();
    let cases = [
        ("2488", 1000, "0.01"),
        ("2489", 801, "0.008"),  // 1001 × 0.008 = 8.008
        ("6488", 4000, "0.008"), // exactly 5000: still the second tier
        ("7488", 3000, "0.005"),
        ("7489", 3001, "0.005"), // 6001 × 0.005 = 30.005 → 30.01
    ];
    for (used, cents, price) in cases {
        let c = case(plan.clone(), &[("droplet_hours", used)]);
        let line = c.quote().unwrap().lines[1].clone();
        assert_eq!(
            (line.amount_cents, line.unit_price),
            (cents, Some(d(price))),
            "{used}"
        );
    }
}

#[test]
fn allowance_without_price_caps_and_unknown_kinds_are_not_billed() {
    let mut plan = studio();
    plan.included.insert("gb_hours".into(), d("100"));
    let c = case(
        plan,
        &[
            ("gb_hours", "5000"),
            ("gpu_hours", "3"),
            ("droplet_hours", "10"),
        ],
    );
    let q = c.quote().unwrap();
    assert_eq!(q.lines.len(), 1, "{:?}", q.lines);
    assert_eq!(q.unbilled_kinds, vec!["gpu_hours".to_string()]);
}

#[test]
fn priced_kind_without_allowance_bills_every_unit() {
    let mut plan = studio();
    plan.overage
        .insert("gb_hours".into(), OveragePrice::PerUnit(d("0.02")));
    let c = case(plan, &[("gb_hours", "10")]);
    assert_eq!(c.amounts()[1], (LineKind::Overage, 20));
}

#[test]
fn currency_mismatch_is_an_error() {
    let mut plan = studio();
    plan.currency = Currency::parse("USD").unwrap();
    assert!(matches!(
        case(plan, &[]).quote(),
        Err(QuoteError::CurrencyMismatch { .. })
    ));
    let mut c = case(studio(), &[]);
    let mut addon = storage();
    addon.currency = Currency::parse("NZD").unwrap();
    c.addons = vec![addon];
    assert!(matches!(
        c.quote(),
        Err(QuoteError::CurrencyMismatch { .. })
    ));
}

#[test]
fn tax_default_custom_exempt_and_rounding() {
    let line = |cents: i64| invoicer::invoice::QuoteLine {
        kind: LineKind::PlanBase,
        deployment_id: None,
        resource_kind: None,
        description: "x".into(),
        quantity: Decimal::ONE,
        unit_price: None,
        amount_cents: cents,
    };
    let cases = [
        (6422, TaxPolicy::default(), 642, Some("GST 10%")),
        (6425, TaxPolicy::default(), 643, Some("GST 10%")), // 642.5 → 643
        (
            1000,
            TaxPolicy::new(d("0.15"), "VAT".into(), false).unwrap(),
            150,
            Some("VAT 15%"),
        ),
        (
            999,
            TaxPolicy::new(d("0.075"), "Tax".into(), false).unwrap(),
            75,
            Some("Tax 7.5%"),
        ),
        (
            6422,
            TaxPolicy::new(d("0.10"), "GST".into(), true).unwrap(),
            0,
            None,
        ),
    ];
    for (subtotal, tax, tax_cents, label) in cases {
        let q = finish(vec![line(subtotal)], &tax).unwrap();
        assert_eq!(q.tax_cents, tax_cents, "{subtotal} {tax:?}");
        assert_eq!(q.total_cents, subtotal + tax_cents);
        assert_eq!(
            q.lines
                .last()
                .filter(|l| l.kind == LineKind::Tax)
                .map(|l| l.description.as_str()),
            label
        );
    }
}

#[test]
fn absurd_amounts_overflow_instead_of_panicking() {
    let mut plan = studio();
    plan.base_price = Decimal::MAX;
    assert!(matches!(
        case(plan, &[]).quote(),
        Err(QuoteError::Overflow(_))
    ));
}

fn money_strategy() -> impl Strategy<Value = Decimal> {
    (0i64..10_000_000, 0u32..5).prop_map(|(m, scale)| Decimal::new(m, scale))
}

proptest! {
    #[test]
    fn lines_sum_to_subtotal_and_total_adds_tax(
        base in money_strategy(),
        addon in money_strategy(),
        used in money_strategy(),
        included in money_strategy(),
        price in money_strategy(),
        rate in 0i64..100,
        day in 1u32..=30,
    ) {
        let plan = Plan {
            base_price: base,
            included: [("k".to_string(), included)].into(),
            overage: [("k".to_string(), OveragePrice::PerUnit(price))].into(),
            ..studio()
        };
        let mut a = storage();
        a.price = addon;
        let mut c = case(plan, &[]);
        c.usage = [("k".to_string(), used)].into();
        c.addons = vec![a];
        let from = format!("2026-04-{day:02}T05:00:00Z");
        c.from = &from;
        let sub = c.quote().unwrap();
        let sum: i64 = sub.lines.iter().map(|l| l.amount_cents).sum();
        let q = finish(sub.lines, &TaxPolicy::new(Decimal::new(rate, 2), "GST".into(), false).unwrap()).unwrap();
        prop_assert_eq!(q.subtotal_cents, sum);
        prop_assert_eq!(q.total_cents, q.subtotal_cents + q.tax_cents);
        prop_assert_eq!(q.lines.iter().filter(|l| l.kind != LineKind::Tax).map(|l| l.amount_cents).sum::<i64>(), q.subtotal_cents);
    }

    #[test]
    fn full_period_is_list_price_and_proration_never_exceeds_it(
        base in money_strategy(),
        from_day in 1u32..=30,
        to_day in 1u32..=30,
    ) {
        let plan = Plan { base_price: base, ..studio() };
        let full = case(plan.clone(), &[]).amounts()[0].1;
        let exact = base * Decimal::ONE_HUNDRED;
        prop_assert!((Decimal::from(full) - exact).abs() <= Decimal::new(5, 1));
        if base.scale() <= 2 {
            prop_assert_eq!(Decimal::from(full), exact);
        }
        let (lo, hi) = (from_day.min(to_day), from_day.max(to_day));
        let mut c = case(plan, &[]);
        let from = format!("2026-04-{lo:02}T00:00:00Z");
        let to = format!("2026-04-{hi:02}T23:00:00Z");
        c.from = &from;
        c.to = Some(&to);
        prop_assert!(c.amounts()[0].1 <= full);
    }

    /// Plan changes at any hour of any day: every day is charged once, so the base charges add
    /// up to at most one period of the dearest plan (exactly, before each line is rounded; and
    /// within half a cent per line after).
    #[test]
    fn a_deployments_prorated_base_never_exceeds_a_period_of_its_dearest_plan(
        changes in proptest::collection::vec((1u32..=30, 0u32..24), 0..5),
        bases in proptest::collection::vec((0i64..20_000_000, 0u32..3).prop_map(|(m, s)| Decimal::new(m, s)), 5),
        starts_in_march in any::<bool>(),
    ) {
        let mut points: Vec<DateTime<Utc>> = changes
            .iter()
            .map(|(day, hour)| ts(&format!("2026-04-{day:02}T{hour:02}:00:00Z")))
            .collect();
        points.sort();
        points.dedup();
        let first = if starts_in_march { ts("2026-03-20T00:00:00Z") } else { ts("2026-04-01T00:00:00Z") };
        points.retain(|p| *p > first);
        let dep = Uuid::new_v4();
        let plans: Vec<Plan> = bases
            .iter()
            .enumerate()
            .map(|(i, b)| Plan { code: format!("p{i}"), name: format!("P{i}"), base_price: *b, ..studio() })
            .collect();
        let mut starts = vec![first];
        starts.extend(points.iter().copied());
        let mut subs: Vec<MeteredSubscription> = starts
            .iter()
            .enumerate()
            .map(|(i, from)| MeteredSubscription {
                subscription: Subscription {
                    id: Uuid::new_v4(),
                    tenant_id: TenantId::parse("acme").unwrap(),
                    deployment_id: dep,
                    plan: format!("p{i}"),
                    addons: vec![],
                    started_at: *from,
                    ended_at: starts.get(i + 1).copied(),
                },
                usage: BTreeMap::new(),
                next_from: None,
            })
            .collect();
        // As the store does, only subscriptions active in the period (a change at midnight
        // on the 1st ends a March subscription before April).
        subs.retain(|m| april().overlaps(m.subscription.started_at, m.subscription.ended_at));
        let tenant = Tenant::with_defaults(TenantId::parse("acme").unwrap());
        let q = quote_tenant(&tenant, &subs, &catalog_of(plans), april()).unwrap().quote;
        let base_lines: Vec<_> = q.lines.iter().filter(|l| l.kind == LineKind::PlanBase).collect();
        prop_assert_eq!(base_lines.len(), subs.len());
        let used: Vec<Decimal> = subs
            .iter()
            .map(|m| bases[m.subscription.plan[1..].parse::<usize>().unwrap()])
            .collect();
        let dearest = used.iter().copied().max().unwrap();
        let days = Decimal::from(april().days());
        let mut exact = Decimal::ZERO;
        let mut billed_days = 0;
        for (m, base) in subs.iter().zip(&used) {
            let s = &m.subscription;
            let next = subs.iter().map(|o| o.subscription.started_at).find(|t| Some(*t) >= s.ended_at && s.ended_at.is_some());
            let a = april().billed_days(s.started_at, s.ended_at, next);
            billed_days += a;
            exact += *base * Decimal::from(a);
        }
        prop_assert!(billed_days <= april().days(), "{billed_days} days charged");
        prop_assert!(exact <= dearest * days, "{exact} > {dearest} × {days}");
        let cents: i64 = base_lines.iter().map(|l| l.amount_cents).sum();
        let full = Decimal::from(cents) - dearest * Decimal::ONE_HUNDRED;
        prop_assert!(full <= Decimal::new(5, 1) * Decimal::from(base_lines.len() as i64), "{cents} cents for a dearest plan of {dearest}");
    }

    #[test]
    fn rounding_moves_at_most_half_a_cent_per_line(
        used in money_strategy(),
        price in (0i64..1_000_000, 0u32..7).prop_map(|(m, s)| Decimal::new(m, s)),
    ) {
        let plan = Plan {
            included: BTreeMap::new(),
            overage: [("k".to_string(), OveragePrice::PerUnit(price))].into(),
            ..studio()
        };
        let c = case(plan, &[("k", &used.to_string())]);
        let q = c.quote().unwrap();
        if let Some(line) = q.lines.iter().find(|l| l.kind == LineKind::Overage) {
            let exact = used * price * Decimal::ONE_HUNDRED;
            prop_assert!((Decimal::from(line.amount_cents) - exact).abs() <= Decimal::new(5, 1));
        }
    }

    #[test]
    fn graduated_never_exceeds_pricing_everything_at_the_top_rate(used in 0i64..20_000) {
        let mut plan = studio();
        plan.overage = [("droplet_hours".to_string(), tiers(TierMode::Graduated))].into();
        let c = case(plan, &[("droplet_hours", &used.to_string())]);
        let q = c.quote().unwrap();
        let over = (used - 1488).max(0);
        let cents = q.lines.get(1).map_or(0, |l| l.amount_cents);
        prop_assert!(cents <= over); // top rate is 1c
        prop_assert!(cents >= (Decimal::from(over) * Decimal::new(5, 1)).floor().try_into().unwrap_or(0i64));
    }
}

// ---------------------------------------------------------------------------------------------
// Lines multiply back (CONTRACT.md section 3, v3)
// ---------------------------------------------------------------------------------------------

/// `round(quantity × unit_price)`, from the exact product (which must exist).
fn multiplied_back(quantity: Decimal, unit_price: Decimal) -> i64 {
    let product = quantity.checked_mul(unit_price).unwrap();
    assert!(
        product.is_zero() || product.scale() == quantity.scale() + unit_price.scale(),
        "{quantity} × {unit_price} = {product} is not exact"
    );
    invoicer::money::to_cents(invoicer::money::Exact::whole(product)).unwrap()
}

#[test]
fn prorated_lines_multiply_back_table() {
    // The case: 7 of 30 days, an allowance of 1700 prorated to 396.666…, 396.7 used:
    // 0.0333… over at 0.15 is exactly half a cent, but the line's quantity is 0.033333, and
    // 0.033333 × 0.15 rounds to 0.
    let mut plan = studio();
    plan.base_price = d("10.00");
    plan.included = [("gb_hours".to_string(), d("1700"))].into();
    plan.overage = [("gb_hours".to_string(), OveragePrice::PerUnit(d("0.15")))].into();
    let (addon, cheap) = (
        storage(),
        Addon {
            price: d("0.10"),
            ..storage()
        },
    );
    let cases = [
        ("396.7", "2026-04-24T00:00:00Z", "0.033333", 0),
        ("400", "2026-04-24T00:00:00Z", "3.333333", 50),
        // 10 of May's 31 days: 1700 × 10/31 = 548.387096…, 600 used: 51.612903… over.
        ("600", "2026-05-22T00:00:00Z", "51.612903", 774),
    ];
    for (used, from, qty, cents) in cases {
        let period = Period::monthly(ts(from).date_naive().with_day(1).unwrap()).unwrap();
        let q = quote_subscription(&SubscriptionInput {
            deployment_id: None,
            plan: &plan,
            addons: &[&addon, &cheap],
            usage: &usage(&[("gb_hours", used)]),
            period,
            active_from: ts(from),
            active_to: None,
            next_from: None,
            currency: &Currency::aud(),
        })
        .unwrap();
        let overage = q
            .lines
            .iter()
            .find(|l| l.kind == LineKind::Overage)
            .unwrap();
        assert_eq!(
            (overage.quantity.to_string(), overage.amount_cents),
            (qty.to_string(), cents),
            "{used} from {from}"
        );
        for l in &q.lines {
            assert_eq!(
                multiplied_back(l.quantity, l.unit_price.unwrap()),
                l.amount_cents,
                "{l:?}"
            );
        }
    }
}

fn period_strategy() -> impl Strategy<Value = Period> {
    (2024i32..=2027, 1u32..=12).prop_map(|(y, m)| {
        Period::monthly(chrono::NaiveDate::from_ymd_opt(y, m, 1).unwrap()).unwrap()
    })
}

fn tiers_strategy() -> impl Strategy<Value = Vec<Tier>> {
    (
        proptest::collection::vec((1i64..5_000_000, 0u32..4), 0..3),
        proptest::collection::vec((0i64..100_000, 0u32..6), 3),
    )
        .prop_map(|(bounds, prices)| {
            let mut up: Vec<Decimal> = bounds.iter().map(|(m, s)| Decimal::new(*m, *s)).collect();
            up.sort();
            up.dedup();
            let mut tiers: Vec<Tier> = up
                .iter()
                .zip(&prices)
                .map(|(u, (m, s))| Tier {
                    up_to: Some(*u),
                    unit_price: Decimal::new(*m, *s),
                })
                .collect();
            let (m, s) = prices[2];
            tiers.push(Tier {
                up_to: None,
                unit_price: Decimal::new(m, s),
            });
            tiers
        })
}

fn overage_strategy() -> impl Strategy<Value = OveragePrice> {
    prop_oneof![
        (0i64..10_000_000, 2u32..7).prop_map(|(m, s)| OveragePrice::PerUnit(Decimal::new(m, s))),
        tiers_strategy().prop_map(|t| OveragePrice::tiered(TierMode::Volume, t).unwrap()),
        tiers_strategy().prop_map(|t| OveragePrice::tiered(TierMode::Graduated, t).unwrap()),
    ]
}

proptest! {
    /// Any plan, any period (28 to 31 days), any window and any usage (with more decimals than
    /// a line shows): every line with a unit price multiplies back to its amount, every
    /// quantity has at most 6 decimals, the lines sum to the subtotal, and a full period is
    /// exactly the list price.
    #[test]
    fn every_priced_line_multiplies_back(
        period in period_strategy(),
        base in money_strategy(),
        addon_prices in proptest::collection::vec(money_strategy(), 0..3),
        included in (0i64..100_000_000, 0u32..4).prop_map(|(m, s)| Decimal::new(m, s)),
        used in (0i64..100_000_000_000, 0u32..10).prop_map(|(m, s)| Decimal::new(m, s)),
        overage in overage_strategy(),
        daily in any::<bool>(),
        (from_day, from_hour) in (0i64..31, 0i64..24),
        to_hours in proptest::option::of(1i64..1500),
        next_after in proptest::option::of(0i64..30),
        rate in 0i64..100,
    ) {
        let plan = Plan {
            base_price: base,
            included: [("k".to_string(), included)].into(),
            overage: [("k".to_string(), overage)].into(),
            proration: if daily { Proration::Daily } else { Proration::None },
            ..studio()
        };
        let addons: Vec<Addon> = addon_prices
            .iter()
            .enumerate()
            .map(|(i, p)| Addon { code: format!("a{i}"), name: format!("A{i}"), price: *p, ..storage() })
            .collect();
        let addon_refs: Vec<&Addon> = addons.iter().collect();
        let used = usage(&[("k", &used.to_string())]);
        let from = period.start_at()
            + chrono::Duration::days(from_day.min(period.days() - 1))
            + chrono::Duration::hours(from_hour);
        let to = to_hours.map(|h| from + chrono::Duration::hours(h));
        let next = to.zip(next_after).map(|(to, h)| to + chrono::Duration::hours(h));
        let quote = |active_from, active_to, next_from| {
            quote_subscription(&SubscriptionInput {
                deployment_id: Some(Uuid::nil()),
                plan: &plan,
                addons: &addon_refs,
                usage: &used,
                period,
                active_from,
                active_to,
                next_from,
                currency: &Currency::aud(),
            })
            .unwrap()
        };
        let tax = TaxPolicy::new(Decimal::new(rate, 2), "GST".into(), false).unwrap();
        let q = finish(quote(from, to, next).lines, &tax).unwrap();
        for l in &q.lines {
            prop_assert!(l.quantity.scale() <= 6, "{:?}", l);
            if let Some(p) = l.unit_price {
                prop_assert_eq!(multiplied_back(l.quantity, p), l.amount_cents, "{:?}", l);
            }
        }
        let non_tax: i64 = q.lines.iter().filter(|l| l.kind != LineKind::Tax).map(|l| l.amount_cents).sum();
        prop_assert_eq!(non_tax, q.subtotal_cents);
        prop_assert_eq!(q.total_cents, q.subtotal_cents + q.tax_cents);

        // The whole period: 1 × the list price, to the cent.
        let full = quote(period.start_at() - chrono::Duration::days(1), None, None);
        let prices = std::iter::once(base).chain(addon_prices.iter().copied());
        for (l, price) in full.lines.iter().zip(prices) {
            prop_assert_eq!((l.quantity, l.unit_price), (Decimal::ONE, Some(price)));
            prop_assert!(!l.description.contains(" days)"), "{:?}", l);
            if price.scale() <= 2 {
                prop_assert_eq!(Decimal::from(l.amount_cents), price * Decimal::ONE_HUNDRED);
            }
        }
    }
}
