//! `metering.usage.recorded` payloads, parsed record by record.
//!
//! Usage is revenue, so one bad record must not cost the good ones beside it: each record of a
//! `{"records": [...]}` batch is parsed on its own, and a record that cannot be parsed or breaks
//! the contract is returned as a [`RejectedUsage`] with the record as received (its raw JSON text,
//! so the echo is what the producer sent). Only a message that is not a JSON object at all (or
//! whose `records` is not a list) is rejected as a whole.
//!
//! Everything PostgreSQL would refuse is refused here, so that a database error is never the
//! record's fault: identifiers are tokens (no NUL bytes, at most 64 characters), instants are in
//! years 0001-9999, quantities are exact non-negative decimals (28 significant digits at most).

use crate::domain::catalog::{check_instant, check_token};
use crate::domain::money::Dec;
pub use crate::domain::usage::UsageRecord;
use crate::error::Error;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use uuid::Uuid;

/// How much of a rejected record is echoed in `billing.usage.rejected`: a huge record is cut to
/// its first 4 KiB of text, so one poison record cannot make an event too big to publish.
pub const ECHO_BYTES: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UsageRecordDto {
    pub event_id: Uuid,
    pub deployment_id: Uuid,
    pub resource_kind: String,
    pub quantity: Dec,
    pub occurred_at: DateTime<Utc>,
}

impl TryFrom<UsageRecordDto> for UsageRecord {
    type Error = Error;
    fn try_from(u: UsageRecordDto) -> Result<Self, Error> {
        if u.quantity.0.is_sign_negative() && !u.quantity.0.is_zero() {
            return Err(Error::bad("quantity must not be negative"));
        }
        check_instant("occurred_at", u.occurred_at)?;
        Ok(UsageRecord {
            event_id: u.event_id,
            deployment_id: u.deployment_id,
            resource_kind: check_token("resource_kind", &u.resource_kind)?,
            // "-0" is zero: store it without a sign.
            quantity: if u.quantity.0.is_zero() {
                Decimal::ZERO
            } else {
                u.quantity.0
            },
            occurred_at: u.occurred_at,
        })
    }
}

/// A record, or a whole message, refused at the edge: why, and what was received.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RejectedUsage {
    pub reason: String,
    /// The record as received: its JSON, or its text (cut to [`ECHO_BYTES`]) when it is huge
    /// or not JSON at all.
    pub record: Value,
}

impl RejectedUsage {
    fn new(reason: impl std::fmt::Display, raw: &str) -> Self {
        RejectedUsage {
            // A reason may quote the input; keep it storable too.
            reason: without_nul(&reason.to_string()),
            record: echo(raw),
        }
    }
}

/// One `metering.usage.recorded` message, parsed: the records to store and the ones refused.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct UsageMessage {
    pub records: Vec<UsageRecord>,
    pub rejected: Vec<RejectedUsage>,
}

/// Parses a payload: one record or `{"records": [...]}`, record by record. Never fails: what
/// cannot be stored comes back in [`UsageMessage::rejected`].
pub fn parse_usage(payload: &[u8]) -> UsageMessage {
    let whole = |reason: String, raw: &str| UsageMessage {
        records: Vec::new(),
        rejected: vec![RejectedUsage::new(reason, raw)],
    };
    let text = match std::str::from_utf8(payload) {
        Ok(text) => text,
        Err(e) => {
            return whole(
                format!("payload is not UTF-8 JSON: {e}"),
                &String::from_utf8_lossy(payload),
            )
        }
    };
    // Borrowing each top-level value as raw text validates the JSON once and keeps every
    // record's text exactly as received for the echo.
    let fields: BTreeMap<String, &RawValue> = match serde_json::from_str(text) {
        Ok(fields) => fields,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return whole(format!("payload is not valid JSON: {e}"), text)
        }
        Err(_) => {
            return whole(
                "payload must be a usage record or {\"records\": [...]}".into(),
                text,
            )
        }
    };
    let Some(records) = fields.get("records") else {
        return match parse_record(text) {
            Ok(record) => UsageMessage {
                records: vec![record],
                rejected: Vec::new(),
            },
            Err(reason) => whole(reason, text),
        };
    };
    let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(records.get()) else {
        return whole("records must be a list of usage records".into(), text);
    };
    let mut message = UsageMessage::default();
    for (i, item) in items.iter().enumerate() {
        match parse_record(item.get()) {
            Ok(record) => message.records.push(record),
            Err(reason) => message.rejected.push(RejectedUsage::new(
                format!("records[{i}]: {reason}"),
                item.get(),
            )),
        }
    }
    message
}

/// One record from its JSON text; the error names the offending field.
fn parse_record(raw: &str) -> Result<UsageRecord, String> {
    let mut de = serde_json::Deserializer::from_str(raw);
    let dto: UsageRecordDto = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("invalid usage record: {inner}")
        } else {
            format!("invalid usage record: {path}: {inner}")
        }
    })?;
    UsageRecord::try_from(dto).map_err(|e| format!("invalid usage record: {e}"))
}

/// The echo of what was received: its JSON when small and valid, else its text, cut at a
/// character boundary. The echo is stored as `jsonb` in the outbox, which refuses the NUL
/// character: JSON holding one is echoed as its text (where NUL is the escape `\u0000`), and a
/// raw NUL byte in text becomes that same escape.
fn echo(raw: &str) -> Value {
    if raw.len() <= ECHO_BYTES {
        if let Ok(value) = serde_json::from_str::<Value>(raw) {
            if !has_nul(&value) {
                return value;
            }
        }
    }
    Value::String(cut(&without_nul(cut(raw))).to_string())
}

/// At most [`ECHO_BYTES`] of `text`, cut at a character boundary.
fn cut(text: &str) -> &str {
    let mut end = text.len().min(ECHO_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn without_nul(text: &str) -> String {
    text.replace('\0', "\\u0000")
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ONE: &str = r#"{"event_id":"6f1c1c2e-8d4a-4f43-9d4b-3a9a8d7e0b01","deployment_id":"6f1c1c2e-8d4a-4f43-9d4b-3a9a8d7e0b02","resource_kind":"droplet_hours","quantity":"24","occurred_at":"2026-04-01T00:00:00Z","extra":1}"#;

    fn with(field: &str, value: Value) -> Value {
        let mut r: Value = serde_json::from_str(ONE).unwrap();
        r[field] = value;
        r
    }

    #[test]
    fn one_record_or_a_batch() {
        let one = parse_usage(ONE.as_bytes());
        assert_eq!((one.records.len(), one.rejected.len()), (1, 0));
        assert_eq!(one.records[0].quantity, Decimal::new(24, 0));
        let batch = parse_usage(format!(r#"{{"records":[{ONE},{ONE}]}}"#).as_bytes());
        assert_eq!((batch.records.len(), batch.rejected.len()), (2, 0));
        assert_eq!(parse_usage(br#"{"records":[]}"#), UsageMessage::default());
    }

    #[test]
    fn a_bad_record_costs_only_itself() {
        let bad = [
            with("quantity", json!(24.5)),
            with("quantity", json!("-1")),
            with("quantity", json!("1e3")),
            with("quantity", json!("100000000000000000000000000000000")),
            with("event_id", json!("x")),
            with("resource_kind", json!("a\u{0}b")),
            with("resource_kind", json!("k".repeat(65))),
            with("occurred_at", json!("9999-12-31T23:00:00-05:00")),
            with("occurred_at", json!("0000-01-01T00:00:00Z")),
            Value::Null,
            json!([ONE]),
        ];
        let mut records: Vec<Value> = vec![serde_json::from_str(ONE).unwrap()];
        records.extend(bad.iter().cloned());
        let parsed = parse_usage(json!({ "records": records }).to_string().as_bytes());
        assert_eq!(parsed.records.len(), 1);
        assert_eq!(parsed.rejected.len(), bad.len());
        for (rejected, sent) in parsed.rejected.iter().zip(&bad) {
            if sent["resource_kind"] == "a\u{0}b" {
                // jsonb cannot hold NUL: the record comes back as its JSON text.
                assert_eq!(rejected.record, json!(sent.to_string()));
                assert!(sent.to_string().contains("a\\u0000b"));
            } else {
                assert_eq!(&rejected.record, sent);
            }
        }
        assert!(parsed.rejected[0]
            .reason
            .contains("records[1]: invalid usage record: quantity"));
        assert!(parsed.rejected[1].reason.contains("negative"));
        assert!(parsed.rejected[5].reason.contains("resource_kind"));
        assert!(parsed.rejected[7].reason.contains("0001-9999"));
    }

    #[test]
    fn messages_that_are_not_usage_are_rejected_whole_with_their_text() {
        for (payload, record) in [
            (&b"droplet_hours=24"[..], json!("droplet_hours=24")),
            (&b""[..], json!("")),
            (&b"[1]"[..], json!([1])),
            (&b"\"x\""[..], json!("x")),
            (&br#"{"records":"nope"}"#[..], json!({"records": "nope"})),
            (&br#"{"records":null}"#[..], json!({"records": null})),
            (&br#"{}"#[..], json!({})),
            (&[0xff, b'{'][..], json!("\u{fffd}{")),
            (&[b'a', 0, b'b'][..], json!("a\\u0000b")),
        ] {
            let parsed = parse_usage(payload);
            assert!(parsed.records.is_empty(), "{record}");
            assert_eq!(parsed.rejected.len(), 1, "{record}");
            assert_eq!(parsed.rejected[0].record, record);
        }
    }

    #[test]
    fn huge_records_are_echoed_cut_to_4_kib() {
        let huge = with("resource_kind", json!("é".repeat(10_000))).to_string();
        let parsed = parse_usage(format!(r#"{{"records":[{huge}]}}"#).as_bytes());
        let echo = parsed.rejected[0].record.as_str().unwrap();
        assert!(echo.len() <= ECHO_BYTES && echo.len() > ECHO_BYTES - 4);
        assert!(huge.starts_with(echo));
    }

    #[test]
    fn negative_zero_is_zero() {
        let parsed = parse_usage(with("quantity", json!("-0.00")).to_string().as_bytes());
        assert!(parsed.records[0].quantity.is_zero());
        assert!(!parsed.records[0].quantity.is_sign_negative());
    }
}
