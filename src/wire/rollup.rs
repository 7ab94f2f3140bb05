//! `billing.rollup.requested`.

use crate::domain::catalog::TenantId;
use crate::domain::period::Period;
pub use crate::domain::rollup::RollupRequest;
use crate::error::Error;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

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
    use super::super::parse;
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
}
