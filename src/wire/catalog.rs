//! Catalogue payloads: `billing.admin.{plans,addons,tenants,subscriptions}.put` and what they
//! answer.

use crate::domain::abn::Abn;
use crate::domain::catalog::*;
use crate::domain::grace::GracePeriod;
use crate::domain::money::Dec;
use crate::error::Error;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

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
            legal_name: patch(t.legal_name, |v| check_legal_name("legal_name", v))?,
            abn: patch(t.abn, Abn::parse).map_err(Error::bad)?,
            address: patch(t.address, |v| check_address("address", v))?,
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

/// A `null`-able field of a put: omitted keeps, `null` clears, a value is checked and set.
fn patch<T, E>(
    field: Option<Option<String>>,
    check: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Patch<T>, E> {
    Ok(match field {
        None => Patch::Keep,
        Some(None) => Patch::Clear,
        Some(Some(v)) => Patch::Set(check(&v)?),
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

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
