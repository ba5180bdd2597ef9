//! Member keys, insurer numbers and card tokens, with validation.
//!
//! A member is identified by insurer number (保険者番号), symbol (記号), number (番号) and
//! branch number (枝番). A card is known only by an opaque [`CardToken`]; the Individual Number
//! (My Number) is never accepted, stored or printed.

use std::fmt;
use std::str::FromStr;

/// Longest symbol and number accepted, in characters.
pub const MEMBER_FIELD_CHARS_MAX: usize = 20;

/// Why a member key, insurer number or card token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemberKeyError {
    /// The insurer number is not 6 or 8 ASCII digits.
    #[error("insurer number {0:?} must be 6 digits (national health insurance) or 8 digits")]
    InsurerFormat(String),
    /// The insurer number's last digit is not the check digit of the others.
    #[error("insurer number {number} has check digit {found}, expected {expected}")]
    InsurerCheckDigit {
        /// The number as given.
        number: String,
        /// Its last digit.
        found: u8,
        /// The check digit computed from the other digits.
        expected: u8,
    },
    /// An 8-digit insurer number whose law number (法別番号) is 00.
    #[error("insurer number {0} starts with 00, which is no law number")]
    InsurerLawNumber(String),
    /// The key text is not `INSURER:SYMBOL:NUMBER:BRANCH`.
    #[error("member key {0:?} must be INSURER:SYMBOL:NUMBER:BRANCH (symbol may be empty)")]
    KeyFormat(String),
    /// The symbol or number is too long or holds forbidden characters.
    #[error("member key {field} {value:?} must be at most 20 characters without ':', spaces, control or invisible format characters")]
    Field {
        /// "symbol" or "number".
        field: &'static str,
        /// The refused value.
        value: String,
    },
    /// The number is empty.
    #[error("member key number must not be empty")]
    EmptyNumber,
    /// The branch number is not two digits.
    #[error("branch number {0:?} must be two digits 00-99")]
    Branch(String),
    /// The card token is not 64 hexadecimal characters.
    #[error("card token must be 64 hexadecimal characters (got {0} characters)")]
    CardTokenFormat(usize),
    /// The text looks like a 12-digit Individual Number, which shikaku never accepts.
    #[error("refused: that looks like an Individual Number (My Number); shikaku accepts only opaque card tokens and never stores My Numbers")]
    LooksLikeIndividualNumber,
}

/// Computes the check digit (検証番号) of an insurer number's leading digits: the digits are
/// multiplied alternately by 2 and 1 starting with 2 at the rightmost, the digits of the
/// products are summed, and the check digit is (10 − sum mod 10) mod 10.
pub fn insurer_check_digit(leading_digits: &[u8]) -> u8 {
    let sum: u32 = leading_digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &digit)| {
            let product = u32::from(digit) * if i % 2 == 0 { 2 } else { 1 };
            product / 10 + product % 10
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// An insurer number (保険者番号): 8 digits, or 6 for national health insurance. The width is
/// implied by the value, because valid 8-digit numbers never start with 00.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct InsurerNumber(u32);

impl InsurerNumber {
    /// Builds an insurer number from its value, validating it as if parsed.
    pub fn new(value: u32) -> Result<InsurerNumber, MemberKeyError> {
        InsurerNumber(value).to_string().parse()
    }

    /// Builds an 8-digit insurer number from its first seven digits by appending the check digit.
    pub fn with_check_digit(leading: u32) -> InsurerNumber {
        Self::complete(leading, 7)
    }

    /// Builds a 6-digit (national health insurance) number from its first five digits.
    pub fn nhi_with_check_digit(leading: u32) -> InsurerNumber {
        Self::complete(leading, 5)
    }

    fn complete(leading: u32, width: usize) -> InsurerNumber {
        let text = format!("{leading:0width$}");
        let digits: Vec<u8> = text.bytes().map(|b| b - b'0').collect();
        InsurerNumber(leading * 10 + u32::from(insurer_check_digit(&digits)))
    }

    /// Rebuilds a number that was validated before it was stored (the projection's compact
    /// keys); never use it on input from outside.
    pub(crate) fn from_validated(value: u32) -> InsurerNumber {
        InsurerNumber(value)
    }

    /// The numeric value.
    pub fn value(self) -> u32 {
        self.0
    }

    /// Whether this is a 6-digit national health insurance (国民健康保険) number.
    pub fn is_national_health_insurance(self) -> bool {
        self.0 < 1_000_000
    }

    /// Whether this insurer belongs to the late-stage elderly system (後期高齢者医療, law 39).
    pub fn is_late_stage_elderly(self) -> bool {
        self.0 / 1_000_000 == 39
    }
}

impl FromStr for InsurerNumber {
    type Err = MemberKeyError;

    fn from_str(text: &str) -> Result<InsurerNumber, MemberKeyError> {
        if !(text.len() == 6 || text.len() == 8) || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MemberKeyError::InsurerFormat(text.to_owned()));
        }
        if text.len() == 8 && text.starts_with("00") {
            return Err(MemberKeyError::InsurerLawNumber(text.to_owned()));
        }
        let digits: Vec<u8> = text.bytes().map(|b| b - b'0').collect();
        let (leading, last) = digits.split_at(digits.len() - 1);
        let expected = insurer_check_digit(leading);
        if last[0] != expected {
            return Err(MemberKeyError::InsurerCheckDigit {
                number: text.to_owned(),
                found: last[0],
                expected,
            });
        }
        let value = digits.iter().fold(0u32, |acc, &d| acc * 10 + u32::from(d));
        Ok(InsurerNumber(value))
    }
}

impl fmt::Display for InsurerNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_national_health_insurance() {
            write!(f, "{:06}", self.0)
        } else {
            write!(f, "{:08}", self.0)
        }
    }
}

impl fmt::Debug for InsurerNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A member key: insurer number, symbol, number and branch number.
#[derive(
    Clone, PartialEq, Eq, PartialOrd, Ord, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct MemberKey {
    /// 保険者番号.
    pub insurer: InsurerNumber,
    /// 記号 (may be empty, e.g. for late-stage elderly insurers).
    pub symbol: String,
    /// 番号.
    pub number: String,
    /// 枝番, 0..=99.
    pub branch: u8,
}

fn valid_field(value: &str) -> bool {
    value.chars().count() <= MEMBER_FIELD_CHARS_MAX
        && !value
            .chars()
            .any(|c| c == ':' || c.is_whitespace() || c.is_control() || is_format_char(c))
}

/// Whether `c` is an invisible Unicode format character (general category Cf): bidirectional
/// overrides and isolates (U+202A–U+202E, U+2066–U+2069) that make text display in another
/// order than it is stored, zero-width characters (U+200B–U+200F, U+2060–U+2064, U+FEFF), the
/// soft hyphen, and the other Cf code points. Two keys that look the same must be the same, so
/// keys and names refuse them.
pub fn is_format_char(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// What [`normalize_typed_key`] changed in a key a person typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyNormalization {
    /// Full-width digits or colons (`１００`, `：`) became ASCII.
    FullWidth,
    /// Spaces around the key or around its parts were removed.
    Trimmed,
}

impl fmt::Display for KeyNormalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyNormalization::FullWidth => "full-width digits read as ASCII digits",
            KeyNormalization::Trimmed => "surrounding spaces removed",
        })
    }
}

/// Normalises a member key as a person types it (reception software, a web form, a
/// terminal): full-width digits and colons become ASCII, spaces (also the ideographic space
/// U+3000) around the key and around each of its parts are trimmed. Returns the text to parse
/// and what was changed, so the caller can say so. Nothing else is touched: a symbol's kanji
/// stay as they are, and format characters are left for the parser to refuse.
pub fn normalize_typed_key(text: &str) -> (String, Vec<KeyNormalization>) {
    let mut changes = Vec::new();
    let widened: String = text
        .chars()
        .map(|c| match c {
            '\u{FF10}'..='\u{FF19}' => char::from(b'0' + (u32::from(c) - 0xFF10) as u8),
            '\u{FF1A}' => ':',
            other => other,
        })
        .collect();
    if widened != text {
        changes.push(KeyNormalization::FullWidth);
    }
    let trimmed: Vec<&str> = widened.split(':').map(str::trim).collect();
    let joined = trimmed.join(":");
    if joined != widened {
        changes.push(KeyNormalization::Trimmed);
    }
    (joined, changes)
}

impl MemberKey {
    /// Builds a member key, validating every part.
    pub fn new(
        insurer: InsurerNumber,
        symbol: &str,
        number: &str,
        branch: u8,
    ) -> Result<MemberKey, MemberKeyError> {
        if !valid_field(symbol) {
            return Err(MemberKeyError::Field { field: "symbol", value: symbol.to_owned() });
        }
        if number.is_empty() {
            return Err(MemberKeyError::EmptyNumber);
        }
        if !valid_field(number) {
            return Err(MemberKeyError::Field { field: "number", value: number.to_owned() });
        }
        if branch > 99 {
            return Err(MemberKeyError::Branch(branch.to_string()));
        }
        Ok(MemberKey { insurer, symbol: symbol.to_owned(), number: number.to_owned(), branch })
    }

    /// Re-validates a key that arrived from outside (a decoded event).
    pub fn validate(&self) -> Result<(), MemberKeyError> {
        InsurerNumber::new(self.insurer.0)?;
        MemberKey::new(self.insurer, &self.symbol, &self.number, self.branch).map(|_| ())
    }
}

impl FromStr for MemberKey {
    type Err = MemberKeyError;

    fn from_str(text: &str) -> Result<MemberKey, MemberKeyError> {
        let parts: Vec<&str> = text.split(':').collect();
        let [insurer, symbol, number, branch] = parts[..] else {
            return Err(MemberKeyError::KeyFormat(text.to_owned()));
        };
        let insurer: InsurerNumber = insurer.parse()?;
        if branch.len() != 2 || !branch.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MemberKeyError::Branch(branch.to_owned()));
        }
        let branch = branch.bytes().fold(0u8, |acc, b| acc * 10 + (b - b'0'));
        MemberKey::new(insurer, symbol, number, branch)
    }
}

impl fmt::Display for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}:{:02}", self.insurer, self.symbol, self.number, self.branch)
    }
}

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberKey({self})")
    }
}

/// An opaque card token, e.g. a keyed hash of the card certificate's serial number. It is
/// never a My Number, and a My Number cannot be turned into one by shikaku.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct CardToken(pub [u8; 32]);

impl FromStr for CardToken {
    type Err = MemberKeyError;

    fn from_str(text: &str) -> Result<CardToken, MemberKeyError> {
        let digits_only: String = text.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
        if digits_only.len() == 12 && digits_only.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MemberKeyError::LooksLikeIndividualNumber);
        }
        let bytes = crate::hex::decode_array::<32>(text)
            .ok_or(MemberKeyError::CardTokenFormat(text.chars().count()))?;
        Ok(CardToken(bytes))
    }
}

impl fmt::Display for CardToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

impl fmt::Debug for CardToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardToken({}…)", &crate::hex::encode(&self.0[..4]))
    }
}

macro_rules! serde_via_display {
    ($($ty:ty),*) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_via_display!(InsurerNumber, MemberKey, CardToken);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digit_matches_the_published_example() {
        // The rule's worked example: 3312001 gives 5, so 33120015 is valid.
        assert_eq!(insurer_check_digit(&[3, 3, 1, 2, 0, 0, 1]), 5);
        assert!("33120015".parse::<InsurerNumber>().is_ok());
        assert_eq!(
            "33120016".parse::<InsurerNumber>(),
            Err(MemberKeyError::InsurerCheckDigit {
                number: "33120016".into(),
                found: 6,
                expected: 5
            })
        );
        assert_eq!(InsurerNumber::with_check_digit(3_312_001).to_string(), "33120015");
    }

    #[test]
    fn six_digit_numbers_keep_their_width() {
        let nhi = InsurerNumber::nhi_with_check_digit(13_101);
        assert_eq!(nhi.to_string().len(), 6);
        assert!(nhi.is_national_health_insurance());
        assert_eq!(nhi.to_string().parse::<InsurerNumber>(), Ok(nhi));
    }

    #[test]
    fn member_key_text_round_trip_with_unicode_symbol() {
        let key: MemberKey = "33120015:記号12:12345:01".parse().unwrap();
        assert_eq!(key.symbol, "記号12");
        assert_eq!(key.to_string(), "33120015:記号12:12345:01");
        assert!(matches!(
            "33120015:a b:1:01".parse::<MemberKey>(),
            Err(MemberKeyError::Field { .. })
        ));
        assert!(matches!("33120015:a:1:1".parse::<MemberKey>(), Err(MemberKeyError::Branch(_))));
        assert_eq!("33120015:a::01".parse::<MemberKey>(), Err(MemberKeyError::EmptyNumber));
    }

    #[test]
    fn my_numbers_are_refused_without_echo() {
        let error = "1234 5678 9012".parse::<CardToken>().unwrap_err();
        assert_eq!(error, MemberKeyError::LooksLikeIndividualNumber);
        assert!(!error.to_string().contains("1234"));
    }
}
