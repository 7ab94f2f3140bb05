//! The catalog: tenants, plans, add-ons and subscriptions as validated domain values.
//!
//! Everything here is built through a constructor that checks it, so the quote engine and the
//! rollup never see an identifier that cannot be a subject token, a negative price or tiers that
//! do not ascend.

use crate::domain::abn::Abn;
use crate::domain::grace::GracePeriod;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("{field}: {value:?} must be 1-64 characters of [A-Za-z0-9_-]")]
    BadId { field: &'static str, value: String },
    #[error("currency {0:?} must be a three-letter ISO 4217 code such as AUD")]
    BadCurrency(String),
    #[error("{0}")]
    Invalid(String),
}

fn is_token(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Checks an identifier that may become a NATS subject token or a line description.
pub fn check_token(field: &'static str, value: &str) -> Result<String, CatalogError> {
    if is_token(value) {
        Ok(value.to_string())
    } else {
        Err(CatalogError::BadId {
            field,
            value: value.chars().take(80).collect(),
        })
    }
}

/// A tenant id: 1–64 characters of `[A-Za-z0-9_-]`, safe as a NATS subject token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, CatalogError> {
        check_token("tenant_id", s).map(TenantId)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TenantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// ISO 4217 code. Invoices assume two minor digits (AUD, USD, NZD, EUR...).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Currency(String);

impl Currency {
    pub fn parse(s: &str) -> Result<Self, CatalogError> {
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Currency(s.to_string()))
        } else {
            Err(CatalogError::BadCurrency(s.chars().take(16).collect()))
        }
    }
    pub fn aud() -> Self {
        Currency("AUD".into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a tenant is taxed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxPolicy {
    pub rate: Decimal,
    pub label: String,
    pub exempt: bool,
}

impl Default for TaxPolicy {
    /// GST at 10%, Australia's rate.
    fn default() -> Self {
        TaxPolicy {
            rate: Decimal::new(10, 2),
            label: "GST".into(),
            exempt: false,
        }
    }
}

impl TaxPolicy {
    pub fn new(rate: Decimal, label: String, exempt: bool) -> Result<Self, CatalogError> {
        if rate.is_sign_negative() || rate >= Decimal::ONE {
            return Err(CatalogError::Invalid(format!(
                "tax_rate {rate} must be at least 0 and below 1"
            )));
        }
        let label = label.trim().to_string();
        if label.is_empty() || label.len() > 32 || label.chars().any(char::is_control) {
            return Err(CatalogError::Invalid(
                "tax_label must be 1-32 characters".into(),
            ));
        }
        Ok(TaxPolicy {
            rate,
            label,
            exempt,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub currency: Currency,
    pub tax: TaxPolicy,
    /// Who the tenant is on its tax invoices; pricing never reads it.
    pub legal: LegalDetails,
    /// Its own grace window; `None` follows the platform default.
    pub grace_period: Option<GracePeriod>,
}

impl Tenant {
    pub fn with_defaults(id: TenantId) -> Self {
        Tenant {
            id,
            currency: Currency::aud(),
            tax: TaxPolicy::default(),
            legal: LegalDetails::default(),
            grace_period: None,
        }
    }
}

/// A party's identity on a tax invoice (CONTRACT.md 5b). Every part is optional for a tenant:
/// below $1,000 the ATO asks for none of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegalDetails {
    pub legal_name: Option<String>,
    pub abn: Option<Abn>,
    pub address: Option<String>,
}

/// The longest legal name and address accepted; longer is a paste accident, not a company.
pub const MAX_LEGAL_NAME: usize = 200;
pub const MAX_ADDRESS: usize = 500;

/// A legal name: one line of 1-200 characters, trimmed.
pub fn check_legal_name(field: &str, name: &str) -> Result<String, CatalogError> {
    let name = name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_LEGAL_NAME
        || name.chars().any(char::is_control)
    {
        return Err(CatalogError::Invalid(format!(
            "{field} must be one line of 1-{MAX_LEGAL_NAME} characters"
        )));
    }
    Ok(name.to_string())
}

/// A postal address: 1-500 characters, trimmed; line breaks are kept (normalised to `\n`), so a
/// multi-line address prints as one, and no other control character is accepted.
pub fn check_address(field: &str, address: &str) -> Result<String, CatalogError> {
    let lines: Vec<&str> = address
        .split('\n')
        .map(|l| l.trim_end_matches('\r').trim())
        .filter(|l| !l.is_empty())
        .collect();
    let address = lines.join("\n");
    if address.is_empty()
        || address.chars().count() > MAX_ADDRESS
        || address.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(CatalogError::Invalid(format!(
            "{field} must be 1-{MAX_ADDRESS} characters (line breaks allowed)"
        )));
    }
    Ok(address)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proration {
    Daily,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierMode {
    /// Each tier prices the part of the quantity that falls inside it.
    Graduated,
    /// The tier the whole quantity reaches prices all of it.
    Volume,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Inclusive upper bound of the tier on the overage quantity; `None` is unbounded.
    pub up_to: Option<Decimal>,
    pub unit_price: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OveragePrice {
    PerUnit(Decimal),
    Tiered { mode: TierMode, tiers: Vec<Tier> },
}

impl OveragePrice {
    pub fn tiered(mode: TierMode, tiers: Vec<Tier>) -> Result<Self, CatalogError> {
        let bad = |m: &str| Err(CatalogError::Invalid(format!("tiers: {m}")));
        if tiers.is_empty() {
            return bad("at least one tier is required");
        }
        let mut previous = Decimal::ZERO;
        for (i, tier) in tiers.iter().enumerate() {
            let last = i + 1 == tiers.len();
            match (tier.up_to, last) {
                (None, true) => {}
                (None, false) => return bad("only the last tier may have up_to null"),
                (Some(_), true) => return bad("the last tier must have up_to null"),
                (Some(up), false) => {
                    if up <= previous {
                        return bad("up_to must be positive and strictly ascending");
                    }
                    previous = up;
                }
            }
            if tier.unit_price.is_sign_negative() {
                return bad("unit_price must not be negative");
            }
        }
        Ok(OveragePrice::Tiered { mode, tiers })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub code: String,
    pub name: String,
    pub currency: Currency,
    pub base_price: Decimal,
    /// Quantity included per full period, by resource kind.
    pub included: BTreeMap<String, Decimal>,
    pub overage: BTreeMap<String, OveragePrice>,
    pub proration: Proration,
}

impl Plan {
    /// Checks the parts the type system cannot: names, non-negative amounts, kinds.
    pub fn validate(self) -> Result<Self, CatalogError> {
        check_token("code", &self.code)?;
        check_name(&self.name)?;
        non_negative("base_price", self.base_price)?;
        for (kind, qty) in &self.included {
            check_token("resource_kind", kind)?;
            non_negative("included", *qty)?;
        }
        for (kind, price) in &self.overage {
            check_token("resource_kind", kind)?;
            if let OveragePrice::PerUnit(p) = price {
                non_negative("unit_price", *p)?;
            }
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addon {
    pub code: String,
    pub name: String,
    pub currency: Currency,
    pub price: Decimal,
    /// Tags the add-on's line for revenue grouping (e.g. `storage_gb`).
    pub resource_kind: Option<String>,
}

impl Addon {
    pub fn validate(self) -> Result<Self, CatalogError> {
        check_token("code", &self.code)?;
        check_name(&self.name)?;
        non_negative("price", self.price)?;
        if let Some(kind) = &self.resource_kind {
            check_token("resource_kind", kind)?;
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub deployment_id: Uuid,
    pub plan: String,
    pub addons: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl Subscription {
    pub fn validate(self) -> Result<Self, CatalogError> {
        check_token("plan", &self.plan)?;
        let mut seen = std::collections::BTreeSet::new();
        for code in &self.addons {
            check_token("addons", code)?;
            if !seen.insert(code) {
                return Err(CatalogError::Invalid(format!("addon {code} listed twice")));
            }
        }
        check_instant("started_at", self.started_at)?;
        if let Some(end) = self.ended_at {
            check_instant("ended_at", end)?;
            if end <= self.started_at {
                return Err(CatalogError::Invalid(
                    "ended_at must be after started_at".into(),
                ));
            }
        }
        Ok(self)
    }
}

/// Plans and add-ons by code: what a set of subscriptions refers to.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    pub plans: std::collections::HashMap<String, Plan>,
    pub addons: std::collections::HashMap<String, Addon>,
}

/// Instants PostgreSQL and RFC 3339 both represent: years 0001-9999.
pub fn check_instant(field: &str, at: DateTime<Utc>) -> Result<(), CatalogError> {
    use chrono::Datelike;
    if (1..=9999).contains(&at.year()) {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "{field} must be in years 0001-9999"
        )))
    }
}

fn check_name(name: &str) -> Result<(), CatalogError> {
    if name.trim().is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(CatalogError::Invalid(
            "name must be 1-200 characters".into(),
        ));
    }
    Ok(())
}

fn non_negative(field: &str, d: Decimal) -> Result<(), CatalogError> {
    if d.is_sign_negative() && !d.is_zero() {
        return Err(CatalogError::Invalid(format!(
            "{field} must not be negative"
        )));
    }
    Ok(())
}

/// A change to one optional field of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patch<T> {
    Keep,
    Clear,
    Set(T),
}

impl<T> Patch<T> {
    /// Whether the stored value changes, and to what: the two parameters of an upsert.
    pub fn change(&self) -> (bool, Option<&T>) {
        match self {
            Patch::Keep => (false, None),
            Patch::Clear => (true, None),
            Patch::Set(v) => (true, Some(v)),
        }
    }
}

/// A validated `tenants.put`.
#[derive(Debug, Clone)]
pub struct TenantPut {
    pub tenant_id: TenantId,
    pub currency: Option<Currency>,
    pub tax_rate: Option<Decimal>,
    pub tax_label: Option<String>,
    pub tax_exempt: Option<bool>,
    pub legal_name: Patch<String>,
    pub abn: Patch<Abn>,
    pub address: Patch<String>,
    /// `None`: unchanged; `Some(None)`: the platform default.
    pub grace_period: Option<Option<GracePeriod>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_subject_tokens() {
        for ok in ["pilot", "acme-co", "A_1", &"x".repeat(64)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "a*", "a>", "a b", "ü", &"x".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tiers_must_ascend_and_end_unbounded() {
        let t = |up: Option<i64>, p: i64| Tier {
            up_to: up.map(Decimal::from),
            unit_price: Decimal::new(p, 3),
        };
        assert!(
            OveragePrice::tiered(TierMode::Graduated, vec![t(Some(10), 1), t(None, 1)]).is_ok()
        );
        assert!(OveragePrice::tiered(TierMode::Volume, vec![]).is_err());
        assert!(OveragePrice::tiered(TierMode::Volume, vec![t(Some(10), 1)]).is_err());
        assert!(OveragePrice::tiered(TierMode::Volume, vec![t(None, 1), t(None, 1)]).is_err());
        assert!(OveragePrice::tiered(
            TierMode::Volume,
            vec![t(Some(10), 1), t(Some(5), 1), t(None, 1)]
        )
        .is_err());
        assert!(OveragePrice::tiered(TierMode::Volume, vec![t(Some(0), 1), t(None, 1)]).is_err());
        assert!(OveragePrice::tiered(TierMode::Volume, vec![t(None, -1)]).is_err());
    }

    #[test]
    fn legal_names_and_addresses() {
        assert_eq!(
            check_legal_name("legal_name", "  Pilot Pty Ltd ").unwrap(),
            "Pilot Pty Ltd"
        );
        assert_eq!(
            check_legal_name("legal_name", "<script>alert(1)</script>").unwrap(),
            "<script>alert(1)</script>",
            "markup is text to the catalog; the renderers escape it"
        );
        for bad in ["", "   ", "Two\nlines", "Tab\there", &"x".repeat(201)] {
            assert!(check_legal_name("legal_name", bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            check_address("address", " 1 Example St\r\n\n Sydney NSW 2000 ").unwrap(),
            "1 Example St\nSydney NSW 2000"
        );
        for bad in ["", "\n \n", "bell\u{7}", &"x".repeat(501)] {
            assert!(check_address("address", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn currencies_and_tax() {
        assert!(Currency::parse("AUD").is_ok());
        assert!(Currency::parse("aud").is_err());
        assert!(Currency::parse("AUDD").is_err());
        assert!(TaxPolicy::new(Decimal::ONE, "GST".into(), false).is_err());
        assert!(TaxPolicy::new(Decimal::new(-1, 2), "GST".into(), false).is_err());
        assert!(TaxPolicy::new(Decimal::new(15, 2), "VAT".into(), false).is_ok());
    }
}
