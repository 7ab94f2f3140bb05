//! Wire DTOs: the JSON shapes of CONTRACT.md, parsed into domain values with `TryFrom` at the
//! edge ("parse, don't validate"). Nothing past the adapters sees these types.

use crate::domain::abn::Abn;
use crate::domain::catalog::*;
use crate::domain::grace::GracePeriod;
use crate::domain::money::Dec;
use crate::domain::period::Period;
use crate::error::Error;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

pub mod usage;
pub use usage::{parse_usage, RejectedUsage, UsageMessage, UsageRecord};

/// Parses a JSON payload into a DTO, mapping every failure to `bad_request`.
pub fn parse<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    // Requests are JSON objects; serde would otherwise accept an array in field order.
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::bad("invalid payload: expected a JSON object"));
    }
    // The path names the offending field: "period_start: input is out of range".
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            Error::bad(format!("invalid payload: {inner}"))
        } else {
            Error::bad(format!("invalid payload: {path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| Error::bad(format!("invalid payload: {e}")))?;
    Ok(value)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TierDto {
    #[serde(default)]
    pub up_to: Option<Dec>,
    pub unit_price: Dec,
}

/// Either `{"unit_price": "0.01"}` or `{"mode": "graduated"|"volume", "tiers": [...]}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OverageDto {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price: Option<Dec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<TierDto>>,
}

impl TryFrom<OverageDto> for OveragePrice {
    type Error = Error;
    fn try_from(o: OverageDto) -> Result<Self, Error> {
        match (o.unit_price, o.mode.as_deref(), o.tiers) {
            (Some(p), None, None) => Ok(OveragePrice::PerUnit(p.0)),
            (None, Some(mode), Some(tiers)) => {
                let mode = match mode {
                    "graduated" => TierMode::Graduated,
                    "volume" => TierMode::Volume,
                    other => {
                        return Err(Error::bad(format!(
                            "overage mode {other:?} must be graduated or volume"
                        )))
                    }
                };
                let tiers = tiers
                    .into_iter()
                    .map(|t| Tier {
                        up_to: t.up_to.map(|d| d.0),
                        unit_price: t.unit_price.0,
                    })
                    .collect();
                Ok(OveragePrice::tiered(mode, tiers)?)
            }
            _ => Err(Error::bad(
                "overage must be {\"unit_price\"} or {\"mode\", \"tiers\"}",
            )),
        }
    }
}

impl From<&OveragePrice> for OverageDto {
    fn from(o: &OveragePrice) -> Self {
        match o {
            OveragePrice::PerUnit(p) => OverageDto {
                unit_price: Some(Dec(*p)),
                mode: None,
                tiers: None,
            },
            OveragePrice::Tiered { mode, tiers } => OverageDto {
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
                        .map(|t| TierDto {
                            up_to: t.up_to.map(Dec),
                            unit_price: Dec(t.unit_price),
                        })
                        .collect(),
                ),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanDto {
    pub code: String,
    pub name: String,
    pub currency: String,
    pub base_price: Dec,
    #[serde(default)]
    pub included: BTreeMap<String, Dec>,
    #[serde(default)]
    pub overage: BTreeMap<String, OverageDto>,
    #[serde(default)]
    pub proration: Option<String>,
}

impl TryFrom<PlanDto> for Plan {
    type Error = Error;
    fn try_from(p: PlanDto) -> Result<Self, Error> {
        let proration = match p.proration.as_deref() {
            None | Some("daily") => Proration::Daily,
            Some("none") => Proration::None,
            Some(other) => {
                return Err(Error::bad(format!(
                    "proration {other:?} must be daily or none"
                )))
            }
        };
        let overage = p
            .overage
            .into_iter()
            .map(|(k, o)| Ok((k, OveragePrice::try_from(o)?)))
            .collect::<Result<_, Error>>()?;
        Ok(Plan {
            code: p.code,
            name: p.name,
            currency: Currency::parse(&p.currency)?,
            base_price: p.base_price.0,
            included: p.included.into_iter().map(|(k, v)| (k, v.0)).collect(),
            overage,
            proration,
        }
        .validate()?)
    }
}

impl From<&Plan> for PlanDto {
    fn from(p: &Plan) -> Self {
        PlanDto {
            code: p.code.clone(),
            name: p.name.clone(),
            currency: p.currency.to_string(),
            base_price: Dec(p.base_price),
            included: p
                .included
                .iter()
                .map(|(k, v)| (k.clone(), Dec(*v)))
                .collect(),
            overage: p
                .overage
                .iter()
                .map(|(k, v)| (k.clone(), v.into()))
                .collect(),
            proration: Some(
                match p.proration {
                    Proration::Daily => "daily",
                    Proration::None => "none",
                }
                .into(),
            ),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddonDto {
    pub code: String,
    pub name: String,
    pub currency: String,
    pub price: Dec,
    #[serde(default)]
    pub resource_kind: Option<String>,
}

impl TryFrom<AddonDto> for Addon {
    type Error = Error;
    fn try_from(a: AddonDto) -> Result<Self, Error> {
        Ok(Addon {
            code: a.code,
            name: a.name,
            currency: Currency::parse(&a.currency)?,
            price: a.price.0,
            resource_kind: a.resource_kind,
        }
        .validate()?)
    }
}

impl From<&Addon> for AddonDto {
    fn from(a: &Addon) -> Self {
        AddonDto {
            code: a.code.clone(),
            name: a.name.clone(),
            currency: a.currency.to_string(),
            price: Dec(a.price),
            resource_kind: a.resource_kind.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscriptionDto {
    pub id: Uuid,
    pub tenant_id: String,
    pub deployment_id: Uuid,
    pub plan: String,
    #[serde(default)]
    pub addons: Vec<String>,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
}

impl TryFrom<SubscriptionDto> for Subscription {
    type Error = Error;
    fn try_from(s: SubscriptionDto) -> Result<Self, Error> {
        Ok(Subscription {
            id: s.id,
            tenant_id: TenantId::parse(&s.tenant_id)?,
            deployment_id: s.deployment_id,
            plan: s.plan,
            addons: s.addons,
            started_at: s.started_at,
            ended_at: s.ended_at,
        }
        .validate()?)
    }
}

impl From<&Subscription> for SubscriptionDto {
    fn from(s: &Subscription) -> Self {
        SubscriptionDto {
            id: s.id,
            tenant_id: s.tenant_id.to_string(),
            deployment_id: s.deployment_id,
            plan: s.plan.clone(),
            addons: s.addons.clone(),
            started_at: s.started_at,
            ended_at: s.ended_at,
        }
    }
}

/// `tenants.put`: omitted fields keep their stored value (or the default for a new tenant).
#[derive(Debug, Clone, Deserialize)]
pub struct TenantPutDto {
    pub tenant_id: String,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub tax_rate: Option<Dec>,
    #[serde(default)]
    pub tax_label: Option<String>,
    #[serde(default)]
    pub tax_exempt: Option<bool>,
    /// Omitted keeps the stored value; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    pub legal_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub abn: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub address: Option<Option<String>>,
    /// Omitted: unchanged; `null`: the platform default; a string: the tenant's own window.
    #[serde(default, deserialize_with = "present")]
    pub grace_period: Option<Option<String>>,
}

/// Tells an explicit `null` (`Some(None)`) from an omitted field (`None`, via `#[serde(default)]`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A change to one optional field of a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patch<T> {
    Keep,
    Clear,
    Set(T),
}

impl<T> Patch<T> {
    fn parse<E>(
        field: Option<Option<String>>,
        check: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Self, E> {
        Ok(match field {
            None => Patch::Keep,
            Some(None) => Patch::Clear,
            Some(Some(v)) => Patch::Set(check(&v)?),
        })
    }

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

impl TryFrom<TenantPutDto> for TenantPut {
    type Error = Error;
    fn try_from(t: TenantPutDto) -> Result<Self, Error> {
        // Validate the tax fields that were given against the defaults for the ones that were not.
        let defaults = TaxPolicy::default();
        TaxPolicy::new(
            t.tax_rate.map_or(defaults.rate, |d| d.0),
            t.tax_label.clone().unwrap_or(defaults.label),
            false,
        )?;
        Ok(TenantPut {
            tenant_id: TenantId::parse(&t.tenant_id)?,
            currency: t.currency.as_deref().map(Currency::parse).transpose()?,
            tax_rate: t.tax_rate.map(|d| d.0),
            tax_label: t.tax_label.map(|l| l.trim().to_string()),
            tax_exempt: t.tax_exempt,
            legal_name: Patch::parse(t.legal_name, |v| check_legal_name("legal_name", v))?,
            abn: Patch::parse(t.abn, Abn::parse).map_err(Error::bad)?,
            address: Patch::parse(t.address, |v| check_address("address", v))?,
            grace_period: t
                .grace_period
                .map(|g| g.as_deref().map(GracePeriod::parse).transpose())
                .transpose()
                .map_err(Error::bad)?,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TenantDto {
    pub tenant_id: String,
    pub currency: String,
    pub tax_rate: Dec,
    pub tax_label: String,
    pub tax_exempt: bool,
    pub legal_name: Option<String>,
    /// The 11 digits, without spaces.
    pub abn: Option<String>,
    pub address: Option<String>,
    /// `null` when the tenant follows the platform default.
    pub grace_period: Option<String>,
}

impl From<&Tenant> for TenantDto {
    fn from(t: &Tenant) -> Self {
        TenantDto {
            tenant_id: t.id.to_string(),
            currency: t.currency.to_string(),
            tax_rate: Dec(t.tax.rate),
            tax_label: t.tax.label.clone(),
            tax_exempt: t.tax.exempt,
            legal_name: t.legal.legal_name.clone(),
            abn: t.legal.abn.as_ref().map(|a| a.digits().to_string()),
            address: t.legal.address.clone(),
            grace_period: t.grace_period.as_ref().map(GracePeriod::to_string),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollupRequestDto {
    pub period_start: NaiveDate,
    #[serde(default)]
    pub period_end: Option<NaiveDate>,
    #[serde(default)]
    pub force: Option<bool>,
    #[serde(default)]
    pub tenant_ids: Option<Vec<String>>,
    #[serde(default)]
    pub draft: Option<bool>,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A validated rollup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupRequest {
    pub period: Period,
    pub force: bool,
    pub tenant_ids: Option<Vec<TenantId>>,
    pub draft: bool,
    pub request_id: Option<String>,
}

impl TryFrom<RollupRequestDto> for RollupRequest {
    type Error = Error;
    fn try_from(r: RollupRequestDto) -> Result<Self, Error> {
        let period = match r.period_end {
            Some(end) => Period::new(r.period_start, end),
            None => Period::monthly(r.period_start),
        }
        .map_err(Error::bad)?;
        let tenant_ids = match r.tenant_ids {
            None => None,
            Some(ids) if ids.is_empty() => {
                return Err(Error::bad(
                    "tenant_ids must not be empty (null means every tenant)",
                ))
            }
            Some(ids) => {
                let mut ids = ids
                    .iter()
                    .map(|t| TenantId::parse(t))
                    .collect::<Result<Vec<_>, _>>()?;
                ids.sort();
                ids.dedup();
                Some(ids)
            }
        };
        if let Some(id) = &r.request_id {
            if id.is_empty() || id.len() > 128 {
                return Err(Error::bad("request_id must be 1-128 characters"));
            }
        }
        Ok(RollupRequest {
            period,
            force: r.force.unwrap_or(false),
            tenant_ids,
            draft: r.draft.unwrap_or(false),
            request_id: r.request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_request_defaults_and_validation() {
        let r: RollupRequest = parse::<RollupRequestDto>(br#"{"period_start":"2026-04-01"}"#)
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(r.period.end.to_string(), "2026-05-01");
        assert!(!r.force && !r.draft && r.tenant_ids.is_none());
        for bad in [
            r#"{}"#,
            r#"{"period_start":"2026-04"}"#,
            r#"{"period_start":"2026-04-01","period_end":"2026-03-01"}"#,
            r#"{"period_start":"2026-04-01","force":"yes"}"#,
            r#"{"period_start":"2026-04-01","tenant_ids":["a.b"]}"#,
            r#"{"period_start":"2026-04-01","tenant_ids":[]}"#,
            r#"[]"#,
            r#"not json"#,
            "",
        ] {
            let r = parse::<RollupRequestDto>(bad.as_bytes()).and_then(RollupRequest::try_from);
            assert!(matches!(r, Err(Error::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn tenant_legal_details_keep_clear_or_set() {
        let put = |json: &str| TenantPut::try_from(parse::<TenantPutDto>(json.as_bytes())?);
        let kept = put(r#"{"tenant_id":"acme"}"#).unwrap();
        assert_eq!(
            (kept.legal_name, kept.abn, kept.address),
            (Patch::Keep, Patch::Keep, Patch::Keep)
        );
        let cleared =
            put(r#"{"tenant_id":"acme","legal_name":null,"abn":null,"address":null}"#).unwrap();
        assert_eq!(
            (cleared.legal_name, cleared.abn, cleared.address),
            (Patch::Clear, Patch::Clear, Patch::Clear)
        );
        let set = put(
            r#"{"tenant_id":"acme","legal_name":" Acme Pty Ltd ","abn":"51 824 753 556","address":"1 Main St\nSydney"}"#,
        )
        .unwrap();
        assert_eq!(set.legal_name, Patch::Set("Acme Pty Ltd".to_string()));
        assert_eq!(set.abn, Patch::Set(Abn::parse("51824753556").unwrap()));
        assert_eq!(set.address, Patch::Set("1 Main St\nSydney".to_string()));
        for bad in [
            r#"{"tenant_id":"acme","abn":"51 824 753 557"}"#,
            r#"{"tenant_id":"acme","abn":51824753556}"#,
            r#"{"tenant_id":"acme","legal_name":""}"#,
            r#"{"tenant_id":"acme","legal_name":7}"#,
            r#"{"tenant_id":"acme","address":" "}"#,
        ] {
            assert!(matches!(put(bad), Err(Error::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn plans_round_trip_and_reject_floats() {
        let json = r#"{"code":"studio","name":"Studio","currency":"AUD","base_price":"50.00",
            "included":{"droplet_hours":"1488"},
            "overage":{"droplet_hours":{"unit_price":"0.01"},
                       "gb_hours":{"mode":"graduated","tiers":[{"up_to":"1000","unit_price":"0.01"},{"up_to":null,"unit_price":"0.008"}]}}}"#;
        let plan = Plan::try_from(parse::<PlanDto>(json.as_bytes()).unwrap()).unwrap();
        let back = serde_json::to_value(PlanDto::from(&plan)).unwrap();
        assert_eq!(back["base_price"], "50.00");
        assert_eq!(
            back["overage"]["gb_hours"]["tiers"][1]["up_to"],
            serde_json::Value::Null
        );
        let float = json.replace(r#""50.00""#, "50.0");
        assert!(parse::<PlanDto>(float.as_bytes()).is_err());
        let bad_mode = json.replace("graduated", "stepped");
        assert!(Plan::try_from(parse::<PlanDto>(bad_mode.as_bytes()).unwrap()).is_err());
    }
}
