//! Australian Business Numbers: parsed once, with the ATO's check-digit algorithm, and stored
//! as the 11 bare digits.
//!
//! People type ABNs grouped (`51 824 753 556`), so whitespace is accepted and dropped; any
//! other character is refused rather than guessed at. A valid checksum says the number is
//! well-formed, not that the Australian Business Register has issued it.
//!
//! The algorithm is ten lines of the ATO's published rule; the only crate that offers it is a
//! single-release 0.1, so it lives here with table tests.

use std::fmt;
use std::str::FromStr;

/// Weights of the ABN checksum, left to right (ATO, "ABN format").
const WEIGHTS: [u32; 11] = [10, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19];

/// Why a string is not an ABN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbnError {
    #[error("ABN {0:?} may contain only digits and spaces")]
    BadCharacter(String),
    #[error("ABN {0:?} must have 11 digits")]
    BadLength(String),
    #[error("ABN {0:?} fails the ABN checksum (a typo?)")]
    BadChecksum(String),
}

/// A well-formed ABN: 11 digits that pass the checksum.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Abn(String);

impl Abn {
    pub fn parse(input: &str) -> Result<Self, AbnError> {
        // Echo at most a typo's worth of the input back in errors.
        let shown = || input.chars().take(40).collect::<String>();
        let mut digits = String::with_capacity(11);
        for c in input.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
            } else if !c.is_whitespace() {
                return Err(AbnError::BadCharacter(shown()));
            }
        }
        if digits.len() != 11 {
            return Err(AbnError::BadLength(shown()));
        }
        if !checksum_ok(&digits) {
            return Err(AbnError::BadChecksum(shown()));
        }
        Ok(Abn(digits))
    }

    /// The 11 digits, as stored.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The grouping the ATO prints: `51 824 753 556`.
    pub fn grouped(&self) -> String {
        let d = &self.0;
        format!("{} {} {} {}", &d[0..2], &d[2..5], &d[5..8], &d[8..11])
    }
}

/// Subtract 1 from the first digit, weight each digit, and the sum is a multiple of 89.
fn checksum_ok(digits: &str) -> bool {
    let sum: i64 = digits
        .bytes()
        .map(|b| i64::from(b - b'0'))
        .enumerate()
        .map(|(i, d)| {
            let d = if i == 0 { d - 1 } else { d };
            d * i64::from(WEIGHTS[i])
        })
        .sum();
    // A leading 0 makes the first term negative; no issued ABN starts with 0.
    sum > 0 && sum % 89 == 0
}

impl fmt::Display for Abn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.grouped())
    }
}

impl FromStr for Abn {
    type Err = AbnError;
    fn from_str(s: &str) -> Result<Self, AbnError> {
        Abn::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Check digits from the other direction (the ABR's way of issuing them): for body digits
    /// d3..d11, the two leading digits are 10 + (89 - Σ w·d mod 89) with the first reduced
    /// by one. Generates valid numbers independently of `checksum_ok`.
    fn issue(body: &str) -> String {
        assert_eq!(body.len(), 9);
        let s: u32 = body
            .bytes()
            .zip(&WEIGHTS[2..])
            .map(|(b, w)| u32::from(b - b'0') * w)
            .sum();
        // Find the two check digits c1 c2 with 10*(c1-1) + c2 + s ≡ 0 (mod 89).
        for c1 in 1..=9u32 {
            for c2 in 0..=9u32 {
                if (10 * (c1 - 1) + c2 + s).is_multiple_of(89) {
                    return format!("{c1}{c2}{body}");
                }
            }
        }
        panic!("no check digits for {body}");
    }

    #[test]
    fn published_abns_are_valid() {
        // The ATO's own ABN, and ABNs of listed companies as printed on their documents.
        for ok in [
            "51 824 753 556",
            "51824753556",
            " 51 824 753 556 ",
            "51\u{a0}824\u{a0}753\u{a0}556",
            "33 051 775 556",
            "88 000 014 675",
            "49 004 028 077",
        ] {
            let abn = Abn::parse(ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            assert_eq!(abn.digits().len(), 11);
        }
        let ato = Abn::parse("51824753556").unwrap();
        assert_eq!(ato.digits(), "51824753556");
        assert_eq!(ato.to_string(), "51 824 753 556");
    }

    #[test]
    fn generated_abns_are_valid_and_one_digit_off_is_not() {
        for body in [
            "824753556",
            "000000001",
            "123456789",
            "999999999",
            "004085616",
        ] {
            let abn = issue(body);
            assert!(Abn::parse(&abn).is_ok(), "{abn}");
            // Any single-digit change breaks the checksum (weights are coprime to 89).
            for pos in 0..11 {
                let mut digits: Vec<u8> = abn.bytes().collect();
                digits[pos] = b'0' + (digits[pos] - b'0' + 1) % 10;
                let typo = String::from_utf8(digits).unwrap();
                assert!(
                    matches!(Abn::parse(&typo), Err(AbnError::BadChecksum(_))),
                    "{typo} (from {abn})"
                );
            }
        }
    }

    #[test]
    fn malformed_input_is_refused_with_its_reason() {
        let kind = |e: &AbnError| match e {
            AbnError::BadCharacter(_) => "character",
            AbnError::BadLength(_) => "length",
            AbnError::BadChecksum(_) => "checksum",
        };
        for (input, want) in [
            ("51 824 753 557", "checksum"),
            ("15 824 753 556", "checksum"),
            ("00 000 000 000", "checksum"),
            ("51-824-753-556", "character"),
            ("ABN 51824753556", "character"),
            ("\u{ff15}1824753556", "character"),
            ("5182475355", "length"),
            ("518247535561", "length"),
            ("", "length"),
        ] {
            match Abn::parse(input) {
                Ok(a) => panic!("{input:?} accepted as {a}"),
                Err(e) => assert_eq!(kind(&e), want, "{input:?}: {e}"),
            }
        }
    }
}
