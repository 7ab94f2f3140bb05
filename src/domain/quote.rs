//! The quote engine: one pure function prices a subscription for a window of a period, and one
//! totals a tenant's lines and adds tax. Provisioning-time quotes, previews and month-end invoices
//! all call these, so a quoted price and an invoiced price cannot differ.
//!
//! Quantities that depend on the proration stay exact by carrying the period length as a common
//! denominator: a usage `u` against an allowance `i` prorated by `a/D` is `(u·D − i·a) / D`. How
//! a line's quantity, unit price and amount then follow from such exact values, so that they
//! multiply back, is the rule on [`Priced`].

use crate::domain::catalog::{
    Addon, Catalog, Currency, OveragePrice, Plan, Proration, Subscription, TaxPolicy, Tenant,
    TierMode,
};
use crate::domain::invoice::{LineKind, QuoteLine};
use crate::domain::money::{self, Exact};
use crate::domain::period::Period;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("{what} {code} is priced in {found}, the invoice is in {expected}")]
    CurrencyMismatch {
        what: &'static str,
        code: String,
        found: String,
        expected: String,
    },
    #[error("unknown {what} {code:?}")]
    Unknown { what: &'static str, code: String },
    #[error("subscription is not active in {0}")]
    NotActive(Period),
    #[error(transparent)]
    Overflow(#[from] money::Overflow),
}

/// One subscription's pricing inputs for one period.
#[derive(Debug, Clone)]
pub struct SubscriptionInput<'a> {
    pub deployment_id: Option<Uuid>,
    pub plan: &'a Plan,
    pub addons: &'a [&'a Addon],
    /// Usage inside the subscription's window, summed by resource kind.
    pub usage: &'a BTreeMap<String, Decimal>,
    pub period: Period,
    pub active_from: DateTime<Utc>,
    pub active_to: Option<DateTime<Utc>>,
    /// When the deployment's next subscription begins, if it has one: on a plan change during
    /// a day, that day is charged to the next subscription only.
    pub next_from: Option<DateTime<Utc>>,
    pub currency: &'a Currency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionQuote {
    pub lines: Vec<QuoteLine>,
    /// Resource kinds with usage that the plan neither includes nor prices: not billed.
    pub unbilled_kinds: Vec<String>,
}

/// A priced set of lines with its totals, tax included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quote {
    pub lines: Vec<QuoteLine>,
    pub subtotal_cents: i64,
    pub tax_cents: i64,
    pub total_cents: i64,
}

fn overflow(what: &str) -> money::Overflow {
    money::Overflow(what.to_string())
}

fn mul(a: Decimal, b: Decimal) -> Result<Decimal, money::Overflow> {
    money::exact_mul(a, b)
}

fn sub(a: Decimal, b: Decimal) -> Result<Decimal, money::Overflow> {
    a.checked_sub(b).ok_or_else(|| overflow("subtraction"))
}

fn add(a: Decimal, b: Decimal) -> Result<Decimal, money::Overflow> {
    a.checked_add(b).ok_or_else(|| overflow("addition"))
}

/// `x · a` for a proration numerator `a` (1 for a whole period, the common case).
fn scaled(x: Decimal, a: Decimal) -> Result<Decimal, money::Overflow> {
    if a == Decimal::ONE {
        Ok(x)
    } else {
        mul(x, a)
    }
}

/// A line's quantity, unit price and amount, built so that the line multiplies back:
/// `round(quantity × unit_price) = amount_cents`, exactly, with a quantity of at most
/// [`money::QUANTITY_DECIMALS`] decimals (CONTRACT.md section 3, v3). There are two ways to
/// build one, and every line with a unit price is built by one of them:
///
/// - [`Priced::units`]: a number of units at a price. The quantity is fixed to 6 decimals
///   first ([`money::fix_quantity`]), and the amount is that quantity times the unit price,
///   rounded once. A full period's base and add-ons are 1 × the list price (so a full period is
///   exactly the list price); overage is its fixed quantity (566.666667 when usage exceeds a
///   prorated allowance by 566.666…) × its per-unit or volume price; tax is the subtotal × the
///   rate.
/// - [`Priced::flat`]: a charge that is itself prorated or derived (a base or add-on for part
///   of a period). Its exact value (the list price × `a/D`) is rounded once to the cent; the
///   line is 1 × that rounded price, and its description says the days. No quantity of
///   `a/D` ever appears, since most such fractions do not terminate.
///
/// A line kind added later follows the same rule: the v3 `commitment` true-up (a prorated
/// minimum less the other lines) is a [`Priced::flat`] charge, never an `amount_cents` set
/// beside a quantity and a price computed separately.
struct Priced {
    quantity: Decimal,
    unit_price: Decimal,
    amount_cents: i64,
}

impl Priced {
    /// `quantity` as written if it has at most 6 decimals (`1`, a subtotal `64.22`, a quantity
    /// [`money::fix_quantity`] fixed), else fixed here.
    fn units(quantity: Decimal, unit_price: Decimal) -> Result<Priced, money::Overflow> {
        let quantity = if quantity.scale() <= money::QUANTITY_DECIMALS {
            quantity
        } else {
            money::fix_quantity(Exact::whole(quantity))?
        };
        let amount_cents = money::to_cents(Exact::whole(mul(quantity, unit_price)?))?;
        Ok(Priced {
            quantity,
            unit_price,
            amount_cents,
        })
    }

    fn flat(amount: Exact) -> Result<Priced, money::Overflow> {
        let amount_cents = money::to_cents(amount)?;
        Ok(Priced {
            quantity: Decimal::ONE,
            unit_price: money::cents_to_decimal(amount_cents),
            amount_cents,
        })
    }

    /// A whole period at `price`, or `a/D` of one.
    fn prorated(price: Decimal, a: u32, d: u32) -> Result<Priced, money::Overflow> {
        if a == d {
            // `units(1, price)`, without multiplying by one on the hot path.
            Ok(Priced {
                quantity: Decimal::ONE,
                unit_price: price,
                amount_cents: money::to_cents(Exact::whole(price))?,
            })
        } else {
            Priced::flat(Exact {
                numer: scaled(price, Decimal::from(a))?,
                denom: d,
            })
        }
    }

    fn line(
        self,
        kind: LineKind,
        deployment_id: Option<Uuid>,
        resource_kind: Option<String>,
        description: String,
    ) -> QuoteLine {
        QuoteLine {
            kind,
            deployment_id,
            resource_kind,
            description,
            quantity: self.quantity,
            unit_price: Some(self.unit_price),
            amount_cents: self.amount_cents,
        }
    }
}

/// Appends `parts` to a new string sized for them: line descriptions are built per line on
/// the hot path, and `format!` costs several times more than this.
fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// A decimal as text; whole numbers (the usual quantities) without the formatting machinery.
fn dec_text(d: Decimal) -> String {
    if d.scale() == 0 {
        if let Ok(n) = i64::try_from(d.mantissa()) {
            return itoa::Buffer::new().format(n).to_string();
        }
    }
    d.to_string()
}

fn symbol(currency: &Currency) -> &'static str {
    match currency.as_str() {
        "EUR" => "€",
        "GBP" => "£",
        "JPY" => "¥",
        _ => "$",
    }
}

fn check_currency(
    what: &'static str,
    code: &str,
    found: &Currency,
    expected: &Currency,
) -> Result<(), QuoteError> {
    if found == expected {
        Ok(())
    } else {
        Err(QuoteError::CurrencyMismatch {
            what,
            code: code.to_string(),
            found: found.to_string(),
            expected: expected.to_string(),
        })
    }
}

/// Prices one subscription: a `plan_base` line, an `addon` line per add-on and an `overage`
/// line per resource kind whose usage exceeds the prorated allowance.
pub fn quote_subscription(input: &SubscriptionInput<'_>) -> Result<SubscriptionQuote, QuoteError> {
    let SubscriptionInput {
        deployment_id,
        plan,
        addons,
        usage,
        period,
        currency,
        ..
    } = *input;
    check_currency("plan", &plan.code, &plan.currency, currency)?;
    for addon in addons {
        check_currency("addon", &addon.code, &addon.currency, currency)?;
    }
    let active = period.active_days(input.active_from, input.active_to);
    if active == 0 {
        return Err(QuoteError::NotActive(period));
    }
    // Days charged (`Period::billed_days`). May be zero: a subscription whose every day went
    // to the next one still bills its usage.
    let active = active - i64::from(period.cedes_last_day(input.active_to, input.next_from));
    let period_days = u32::try_from(period.days()).map_err(|_| overflow("period"))?;
    let active = u32::try_from(active).map_err(|_| overflow("period"))?;
    // (a, D): the proration as a fraction; `none` bills any charged day's period in full.
    // A whole period is 1/1, not D/D: the same value, with every amount a whole number of
    // units, so it is rounded without a division.
    let (a, d) = match plan.proration {
        Proration::Daily if active == period_days => (1, 1),
        Proration::Daily => (active, period_days),
        Proration::None => (active.min(1), 1),
    };
    let a_dec = Decimal::from(a);
    let d_dec = Decimal::from(d);
    let partial = if a == d {
        String::new()
    } else {
        format!(" ({active} of {period_days} days)")
    };
    let sym = symbol(currency);

    let mut lines = Vec::with_capacity(2 + addons.len() + usage.len());
    lines.push(Priced::prorated(plan.base_price, a, d)?.line(
        LineKind::PlanBase,
        deployment_id,
        None,
        concat(&["Plan: ", &plan.name, &partial]),
    ));
    for addon in addons {
        lines.push(Priced::prorated(addon.price, a, d)?.line(
            LineKind::Addon,
            deployment_id,
            addon.resource_kind.clone(),
            concat(&["Addon: ", &addon.name, &partial]),
        ));
    }

    let mut unbilled_kinds = Vec::new();
    for (kind, &used) in usage {
        let included = plan.included.get(kind);
        let price = plan.overage.get(kind);
        if included.is_none() && price.is_none() {
            unbilled_kinds.push(kind.clone());
            continue;
        }
        // Over the allowance, in units of 1/D.
        let over = sub(
            scaled(used, d_dec)?,
            scaled(included.copied().unwrap_or_default(), a_dec)?,
        )?;
        let Some(price) = price else { continue }; // an allowance without a price is a cap
        if over <= Decimal::ZERO {
            continue;
        }
        // The line's quantity, fixed before anything is priced from it (a tier chosen, an
        // amount computed): usage over by less than half a millionth of a unit is not over.
        let quantity = money::fix_quantity(Exact {
            numer: over,
            denom: d,
        })?;
        if quantity.is_zero() {
            continue;
        }
        let description = |detail: &str| concat(&["Overage: ", kind, " (", detail, ")"]);
        let line = match price {
            OveragePrice::PerUnit(p) => Priced::units(quantity, *p)?.line(
                LineKind::Overage,
                deployment_id,
                Some(kind.clone()),
                description(&concat(&[&dec_text(quantity), " × ", sym, &p.to_string()])),
            ),
            OveragePrice::Tiered {
                mode: TierMode::Volume,
                tiers,
            } => {
                let tier = volume_tier(tiers, quantity)?;
                Priced::units(quantity, tier)?.line(
                    LineKind::Overage,
                    deployment_id,
                    Some(kind.clone()),
                    description(&format!("{quantity} × {sym}{tier}")),
                )
            }
            OveragePrice::Tiered {
                mode: TierMode::Graduated,
                tiers,
            } => {
                // No single unit price produces the amount: the slices are in the description.
                let (amount, parts) = graduated(tiers, quantity)?;
                let detail = parts
                    .iter()
                    .map(|(q, p)| format!("{q} × {sym}{p}"))
                    .collect::<Vec<_>>()
                    .join(" + ");
                QuoteLine {
                    kind: LineKind::Overage,
                    deployment_id,
                    resource_kind: Some(kind.clone()),
                    description: description(&detail),
                    quantity,
                    unit_price: None,
                    amount_cents: money::to_cents(Exact::whole(amount))?,
                }
            }
        };
        lines.push(line);
    }
    Ok(SubscriptionQuote {
        lines,
        unbilled_kinds,
    })
}

/// The unit price of the tier the whole quantity falls in.
fn volume_tier(
    tiers: &[crate::domain::catalog::Tier],
    quantity: Decimal,
) -> Result<Decimal, money::Overflow> {
    for tier in tiers {
        match tier.up_to {
            Some(up) if quantity > up => continue,
            _ => return Ok(tier.unit_price),
        }
    }
    Err(overflow("tiers without an unbounded last tier"))
}

/// Sums each tier's share of `quantity` at that tier's price; returns the exact amount and
/// the (quantity, price) parts for the description.
fn graduated(
    tiers: &[crate::domain::catalog::Tier],
    quantity: Decimal,
) -> Result<(Decimal, Vec<(Decimal, Decimal)>), money::Overflow> {
    let mut remaining = quantity;
    let mut floor = Decimal::ZERO;
    let mut amount = Decimal::ZERO;
    let mut parts = Vec::new();
    for tier in tiers {
        if remaining <= Decimal::ZERO {
            break;
        }
        let take = match tier.up_to {
            Some(up) => {
                let take = remaining.min(sub(up, floor)?);
                floor = up;
                take
            }
            None => remaining,
        };
        amount = add(amount, mul(take, tier.unit_price)?)?;
        remaining = sub(remaining, take)?;
        parts.push((take.normalize(), tier.unit_price));
    }
    Ok((amount, parts))
}

/// The tax line for a subtotal, or `None` for an exempt tenant.
pub fn tax_line(subtotal_cents: i64, tax: &TaxPolicy) -> Result<Option<QuoteLine>, QuoteError> {
    if tax.exempt {
        return Ok(None);
    }
    let base = money::cents_to_decimal(subtotal_cents);
    let percent = mul(tax.rate, Decimal::ONE_HUNDRED)?.normalize();
    Ok(Some(Priced::units(base, tax.rate)?.line(
        LineKind::Tax,
        None,
        None,
        format!("{} {percent}%", tax.label),
    )))
}

/// Totals a tenant's priced lines and appends its tax line.
pub fn finish(mut lines: Vec<QuoteLine>, tax: &TaxPolicy) -> Result<Quote, QuoteError> {
    let subtotal_cents = lines.iter().try_fold(0i64, |acc, l| {
        acc.checked_add(l.amount_cents)
            .ok_or_else(|| overflow("subtotal"))
    })?;
    let tax = tax_line(subtotal_cents, tax)?;
    let tax_cents = tax.as_ref().map_or(0, |l| l.amount_cents);
    lines.extend(tax);
    let total_cents = subtotal_cents
        .checked_add(tax_cents)
        .ok_or_else(|| overflow("total"))?;
    Ok(Quote {
        lines,
        subtotal_cents,
        tax_cents,
        total_cents,
    })
}

/// A subscription with the usage that fell inside its window.
#[derive(Debug, Clone)]
pub struct MeteredSubscription {
    pub subscription: Subscription,
    pub usage: BTreeMap<String, Decimal>,
    /// When the deployment's next subscription begins, whichever tenant holds it: a deployment
    /// handed to another tenant is not among this tenant's subscriptions, so the caller looks
    /// it up (`store::rollup::successors`). `None` when there is none, or none the caller
    /// knows of beyond the subscriptions quoted beside this one (those are searched too).
    pub next_from: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantQuote {
    pub quote: Quote,
    /// (deployment, resource kind) pairs whose usage the plans do not price.
    pub unbilled_kinds: Vec<(Uuid, String)>,
}

/// Prices a tenant's subscriptions for a period into one set of lines with one tax line: the
/// invoice the rollup issues and the preview a tenant sees.
pub fn quote_tenant(
    tenant: &Tenant,
    subscriptions: &[MeteredSubscription],
    catalog: &Catalog,
    period: Period,
) -> Result<TenantQuote, QuoteError> {
    let mut lines = Vec::with_capacity(
        1 + subscriptions
            .iter()
            .map(|m| 2 + m.subscription.addons.len() + m.usage.len())
            .sum::<usize>(),
    );
    let mut unbilled_kinds = Vec::new();
    for m in subscriptions {
        let s = &m.subscription;
        // Subscriptions of one deployment never overlap, so its next one starts at or after
        // this one's end: the earliest of those quoted here and the one the caller found
        // (another tenant's, on a handover).
        let next_from = s.ended_at.and_then(|end| {
            subscriptions
                .iter()
                .map(|o| &o.subscription)
                .filter(|o| o.deployment_id == s.deployment_id && o.started_at >= end)
                .map(|o| o.started_at)
                .chain(m.next_from.filter(|n| *n >= end))
                .min()
        });
        let plan = catalog
            .plans
            .get(&s.plan)
            .ok_or_else(|| QuoteError::Unknown {
                what: "plan",
                code: s.plan.clone(),
            })?;
        let addons = s
            .addons
            .iter()
            .map(|code| {
                catalog.addons.get(code).ok_or_else(|| QuoteError::Unknown {
                    what: "addon",
                    code: code.clone(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let priced = quote_subscription(&SubscriptionInput {
            deployment_id: Some(s.deployment_id),
            plan,
            addons: &addons,
            usage: &m.usage,
            period,
            active_from: s.started_at,
            active_to: s.ended_at,
            next_from,
            currency: &tenant.currency,
        })?;
        lines.extend(priced.lines);
        unbilled_kinds.extend(
            priced
                .unbilled_kinds
                .into_iter()
                .map(|k| (s.deployment_id, k)),
        );
    }
    Ok(TenantQuote {
        quote: finish(lines, &tenant.tax)?,
        unbilled_kinds,
    })
}
