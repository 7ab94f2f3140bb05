//! Exact money: decimal prices and quantities, integer cents on invoices.
//!
//! [`to_cents`] is the one place where an exact amount becomes cents. Amounts that carry a
//! proration (`active_days / period_days`) are passed as a numerator over that integer
//! denominator, so even a price prorated over 31 days is rounded exactly once, from its exact
//! rational value, half away from zero. [`fix_quantity`] rounds a line's quantity to
//! [`QUANTITY_DECIMALS`] the same way, before anything is priced from it, and [`exact_mul`]
//! multiplies without the silent rounding `Decimal`'s own multiplication falls back to.

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

/// The most decimals a line's quantity has (CONTRACT.md section 3, v3): what a person reads
/// on an invoice, and what `quantity × unit_price` is computed from.
pub const QUANTITY_DECIMALS: u32 = 6;

/// `amount` in units of `10^-places`, rounded half away from zero, as a signed integer.
///
/// `numer` is `m / 10^s` (its mantissa and scale), so the result is the integer ratio
/// `m·10^places / (10^s·denom)`, computed exactly in 128-bit integers: for `places ≤ 6`,
/// `|m|·10^places < 2^96·2^20`, and `10^s·denom ≤ 10^28·(2^32 − 1) < 2^126`, so nothing here
/// can overflow.
#[inline]
fn round_to(amount: Exact, places: u32) -> Result<i128, Overflow> {
    debug_assert!(places <= QUANTITY_DECIMALS);
    if amount.denom == 0 {
        return Err(Overflow(format!("{} / {}", amount.numer, amount.denom)));
    }
    let magnitude = amount.numer.mantissa().unsigned_abs() * 10u128.pow(places);
    let divisor = 10u128.pow(amount.numer.scale()) * u128::from(amount.denom);
    let (mut q, rem) = (magnitude / divisor, magnitude % divisor);
    if rem >= divisor - rem {
        q += 1;
    }
    // q < 2^116: it fits.
    let q = q as i128;
    Ok(if amount.numer.is_sign_negative() {
        -q
    } else {
        q
    })
}

/// Rounds an exact amount to integer cents, half away from zero. The only rounding of money
/// in invoicer.
pub fn to_cents(amount: Exact) -> Result<i64, Overflow> {
    let cents = round_to(amount, 2)?;
    i64::try_from(cents).map_err(|_| Overflow(format!("{} / {}", amount.numer, amount.denom)))
}

/// A line's quantity from an exact (possibly prorated) one: rounded half away from zero to
/// [`QUANTITY_DECIMALS`], without trailing zeros (`672`, `0.5`, `3.333333`). A line is priced
/// from this quantity, never from the exact one, so the quantity shown multiplies back to the
/// amount.
pub fn fix_quantity(quantity: Exact) -> Result<Decimal, Overflow> {
    // The usual case, a whole period's usage in whole or few decimals: nothing to round.
    if quantity.denom == 1 && quantity.numer.scale() <= QUANTITY_DECIMALS {
        return Ok(quantity.numer.normalize());
    }
    let units = round_to(quantity, QUANTITY_DECIMALS)?;
    Decimal::try_from_i128_with_scale(units, QUANTITY_DECIMALS)
        .map(|d| d.normalize())
        .map_err(|_| Overflow(format!("quantity {} / {}", quantity.numer, quantity.denom)))
}

/// `a × b`, exactly or not at all. `Decimal`'s multiplication rounds a product that needs more
/// than 28 decimals or 96 bits; a line amount computed from such a product would no longer be
/// `quantity × unit_price`, so that is an overflow here.
pub fn exact_mul(a: Decimal, b: Decimal) -> Result<Decimal, Overflow> {
    // `Decimal` keeps the scale `sa + sb` exactly when it did not have to round (a product
    // by zero aside, whose scale it drops; a tiny product rounded to zero is not exact).
    let exact = |a: Decimal, b: Decimal| {
        a.checked_mul(b)
            .filter(|p| p.scale() == a.scale() + b.scale() || a.is_zero() || b.is_zero())
    };
    // Trailing zeros can push the scale past 28 when the value needs fewer: retry without.
    exact(a, b)
        .or_else(|| exact(a.normalize(), b.normalize()))
        .ok_or_else(|| Overflow(format!("{a} × {b} is not exact in 28 decimals")))
}

/// A quantity as a person reads it: as stored, without trailing zeros, and never more than
/// [`QUANTITY_DECIMALS`] (a line stored before quantities were fixed is shown rounded).
pub fn quantity_text(quantity: Decimal) -> String {
    quantity
        .round_dp_with_strategy(
            QUANTITY_DECIMALS,
            rust_decimal::RoundingStrategy::MidpointAwayFromZero,
        )
        .normalize()
        .to_string()
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
    fn quantities_are_fixed_to_six_decimals_half_away_from_zero() {
        let cases = [
            ("672", 1, "672"),
            ("672.000", 1, "672"),
            ("0.5", 1, "0.5"),
            ("1", 30, "0.033333"),
            ("100", 30, "3.333333"),
            ("2", 3, "0.666667"),
            ("0.0000005", 1, "0.000001"),
            ("0.00000049", 1, "0"),
            ("-2", 3, "-0.666667"),
            ("17000", 31, "548.387097"),
        ];
        for (numer, denom, want) in cases {
            let got = fix_quantity(Exact {
                numer: d(numer),
                denom,
            })
            .unwrap();
            assert_eq!(got.to_string(), want, "{numer}/{denom}");
        }
        assert!(fix_quantity(Exact {
            numer: Decimal::MAX,
            denom: 3
        })
        .is_err());
    }

    #[test]
    fn exact_mul_refuses_to_round() {
        assert_eq!(
            exact_mul(d("0.033333"), d("0.15")).unwrap(),
            d("0.00499995")
        );
        assert_eq!(exact_mul(d("50.00"), d("1")).unwrap(), d("50"));
        assert_eq!(
            exact_mul(d("0"), Decimal::new(1, 28)).unwrap(),
            Decimal::ZERO
        );
        // 28 decimals × 2 decimals: `Decimal` alone would round this to 0.005.
        let long = d("0.0333333333333333333333333333");
        assert!(exact_mul(long, d("0.15")).is_err());
        assert!(exact_mul(Decimal::MAX, d("2")).is_err());
        assert!(exact_mul(Decimal::new(1, 20), Decimal::new(1, 10)).is_err());
        assert_eq!(exact_mul(d("0.00"), d("7.5")).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn quantities_print_as_stored_with_at_most_six_decimals() {
        assert_eq!(quantity_text(d("1")), "1");
        assert_eq!(quantity_text(d("0.500000")), "0.5");
        assert_eq!(quantity_text(d("566.666667")), "566.666667");
        // A line stored before quantities were fixed.
        assert_eq!(
            quantity_text(d("0.5666666666666666666666666667")),
            "0.566667"
        );
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
