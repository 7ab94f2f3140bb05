//! Exact money: decimal prices and quantities, integer cents on invoices.
//!
//! [`to_cents`] is the one place where an exact amount becomes cents. Amounts that carry a
//! proration (`active_days / period_days`) are passed as a numerator over that integer
//! denominator, so even a price prorated over 31 days is rounded exactly once, from its exact
//! rational value, half away from zero.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::str::FromStr;

/// Money arithmetic left the representable range (an absurd price or quantity).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("amount out of range: {0}")]
pub struct Overflow(pub String);

/// An exact rational amount in currency units: `numer / denom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exact {
    pub numer: Decimal,
    pub denom: u32,
}

impl Exact {
    pub fn whole(amount: Decimal) -> Self {
        Exact {
            numer: amount,
            denom: 1,
        }
    }
}

/// Rounds an exact amount to integer cents, half away from zero. The only rounding in invoicer.
///
/// `numer` is `m / 10^s` (its mantissa and scale), so the amount in cents is the integer ratio
/// `m·100 / (10^s·denom)`, computed exactly in 128-bit integers: `|m| < 2^96` and
/// `10^s·denom ≤ 10^28·(2^32 − 1) < 2^126`, so nothing here can overflow.
pub fn to_cents(amount: Exact) -> Result<i64, Overflow> {
    let overflow = || Overflow(format!("{} / {}", amount.numer, amount.denom));
    if amount.denom == 0 {
        return Err(overflow());
    }
    let magnitude = amount.numer.mantissa().unsigned_abs() * 100;
    let divisor = 10u128.pow(amount.numer.scale()) * u128::from(amount.denom);
    let (mut q, rem) = (magnitude / divisor, magnitude % divisor);
    if rem >= divisor - rem {
        q += 1;
    }
    let cents = i64::try_from(q).map_err(|_| overflow())?;
    Ok(if amount.numer.is_sign_negative() {
        -cents
    } else {
        cents
    })
}

/// Cents as an exact decimal in currency units (`6422` → `64.22`).
pub fn cents_to_decimal(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// `6422` → `"64.22"`, `-5` → `"-0.05"`.
pub fn format_cents(cents: i64) -> String {
    format!("{:.2}", cents_to_decimal(cents))
}

/// Why a decimal string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    #[error("{0:?} is not an exact decimal string")]
    Invalid(String),
    #[error("{0:?} must not be negative")]
    Negative(String),
}

/// Parses an exact decimal string such as `"0.0035"`; exponents, hex and inexact input are refused.
pub fn parse_decimal(s: &str) -> Result<Decimal, DecimalError> {
    let t = s.trim();
    let plain = !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '-' || c == '+')
        && t.chars().any(|c| c.is_ascii_digit());
    if !plain {
        return Err(DecimalError::Invalid(s.to_string()));
    }
    Decimal::from_str_exact(t).map_err(|_| DecimalError::Invalid(s.to_string()))
}

/// As [`parse_decimal`], refusing negatives (prices, quantities).
pub fn parse_non_negative(s: &str) -> Result<Decimal, DecimalError> {
    let d = parse_decimal(s)?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(DecimalError::Negative(s.to_string()));
    }
    Ok(d)
}

/// Serde adapter: decimals travel as JSON strings only. A JSON number is a type error, because
/// a float on the wire has already lost exactness before we could see it.
pub mod decimal_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let s = String::deserialize(d)?;
        Decimal::from_str(&s)
            .ok()
            .and_then(|_| parse_decimal(&s).ok())
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not an exact decimal string"))
            })
    }
}

/// Serde adapter for `Option<Decimal>` carried as a string or null.
pub mod opt_decimal_str {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&d.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| parse_decimal(&s).map_err(|e| serde::de::Error::custom(e.to_string())))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        parse_decimal(s).unwrap()
    }

    #[test]
    fn rounds_half_away_from_zero() {
        let cases = [
            ("6.72", 1, 672),
            ("6.425", 1, 643),
            ("6.424999", 1, 642),
            ("-6.425", 1, -643),
            ("0.005", 1, 1),
            ("0.004", 1, 0),
            ("0.0035", 1, 0),
            ("6.422", 1, 642),
            // 50 * 15 / 31 = 24.1935..., 10 / 3 = 3.333...
            ("750", 31, 2419),
            ("10", 3, 333),
            // 0.05 / 2 = 0.025 exactly half a cent: away from zero.
            ("0.05", 2, 3),
            ("-0.05", 2, -3),
        ];
        for (numer, denom, want) in cases {
            let got = to_cents(Exact {
                numer: d(numer),
                denom,
            })
            .unwrap();
            assert_eq!(got, want, "{numer}/{denom}");
        }
    }

    /// The rounding as first written, in decimal arithmetic with exact remainders: the
    /// integer version must agree with it everywhere.
    fn to_cents_by_decimal_division(amount: Exact) -> Option<i64> {
        let denom = Decimal::from(amount.denom);
        let scaled = amount.numer.checked_mul(Decimal::ONE_HUNDRED)?;
        let magnitude = scaled.abs();
        let mut q = magnitude.checked_div(denom)?.trunc();
        let mut rem = magnitude - q * denom;
        while rem.is_sign_negative() && !rem.is_zero() {
            q -= Decimal::ONE;
            rem += denom;
        }
        while rem >= denom {
            q += Decimal::ONE;
            rem -= denom;
        }
        if rem * Decimal::TWO >= denom {
            q += Decimal::ONE;
        }
        let cents = i64::try_from(q).ok()?;
        Some(if scaled.is_sign_negative() {
            -cents
        } else {
            cents
        })
    }

    proptest::proptest! {
        #[test]
        fn integer_rounding_agrees_with_decimal_rounding(
            mantissa in -10_000_000_000_000i64..10_000_000_000_000i64,
            scale in 0u32..12,
            denom in 1u32..400,
        ) {
            let amount = Exact { numer: Decimal::new(mantissa, scale), denom };
            proptest::prop_assert_eq!(to_cents(amount).ok(), to_cents_by_decimal_division(amount));
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        assert!(to_cents(Exact {
            numer: Decimal::MAX,
            denom: 1
        })
        .is_err());
        assert!(to_cents(Exact {
            numer: Decimal::MAX,
            denom: u32::MAX
        })
        .is_err());
        let tiny = Decimal::new(5, 28);
        assert_eq!(
            to_cents(Exact {
                numer: tiny,
                denom: u32::MAX
            }),
            Ok(0)
        );
        assert!(to_cents(Exact {
            numer: Decimal::ONE,
            denom: 0
        })
        .is_err());
    }

    #[test]
    fn parse_refuses_what_is_not_a_plain_decimal() {
        for bad in ["", "1e3", "0x10", "abc", "1.2.3", "NaN", "inf", " "] {
            assert!(parse_decimal(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_decimal("0.0035").unwrap().to_string(), "0.0035");
        assert_eq!(parse_decimal("50.00").unwrap().to_string(), "50.00");
        assert!(parse_non_negative("-1").is_err());
        assert!(parse_non_negative("0").is_ok());
    }

    #[test]
    fn json_numbers_are_refused() {
        #[derive(serde::Deserialize)]
        struct P {
            #[serde(with = "decimal_str")]
            #[allow(dead_code)]
            price: Decimal,
        }
        assert!(serde_json::from_str::<P>(r#"{"price": 0.01}"#).is_err());
        assert!(serde_json::from_str::<P>(r#"{"price": "0.01"}"#).is_ok());
    }

    #[test]
    fn formats_cents() {
        assert_eq!(format_cents(6422), "64.22");
        assert_eq!(format_cents(5), "0.05");
        assert_eq!(format_cents(-5), "-0.05");
        assert_eq!(format_cents(0), "0.00");
    }
}

/// A decimal that travels as a JSON string (`"0.01"`), never as a JSON number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dec(pub Decimal);

impl Serialize for Dec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        decimal_str::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Dec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        decimal_str::deserialize(d).map(Dec)
    }
}
