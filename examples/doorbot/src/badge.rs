//! Card numbers and badges. A [`CardNumber`] exists only between a reader
//! and [`Salt::badge`]: it cannot be printed, logged or serialised (its
//! `Debug` is redacted, it has no `Display`), and its bytes are zeroed
//! when it is dropped. What is kept, logged and sent is the [`Badge`],
//! `BLAKE3(salt ‖ card number)` in hex, as the membership dapp stores it.
//!
//! A card number is its decimal digits: readers that see a number in
//! another form (RDM6300's hex, Wiegand's bits) give its decimal value,
//! zero-padded to 10 digits, which is what keyboard-wedge readers type
//! for the same 125 kHz card.

/// A card's number as a reader read it. Never printed, never stored.
pub struct CardNumber(Vec<u8>);

impl CardNumber {
    /// A number from a reader's digits (`None`: empty, not digits, or
    /// longer than 20).
    pub fn from_digits(digits: &str) -> Option<Self> {
        let ok =
            !digits.is_empty() && digits.len() <= 20 && digits.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| Self(digits.as_bytes().to_vec()))
    }

    /// The decimal form of a number a reader decoded, 10 digits at least.
    pub fn from_value(value: u64) -> Self {
        Self(format!("{value:010}").into_bytes())
    }
}

impl std::fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardNumber(<not shown>)")
    }
}

impl PartialEq for CardNumber {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Drop for CardNumber {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            *b = 0;
        }
        std::hint::black_box(&self.0);
    }
}

/// The chain's badge salt (`membership/salt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salt(String);

impl Salt {
    /// The salt from the membership dapp's `salt` file (`None`: empty).
    pub fn from_file(text: &str) -> Option<Self> {
        let s = text.trim();
        (!s.is_empty()).then(|| Self(s.to_string()))
    }

    /// The badge of `card`; the card number is consumed (and zeroed).
    pub fn badge(&self, card: CardNumber) -> Badge {
        let mut h = blake3::Hasher::new();
        h.update(self.0.as_bytes());
        h.update(&card.0);
        Badge(h.finalize().to_hex().to_string())
    }
}

/// A salted badge hash (64 hex digits): safe to keep, log and send.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Badge(String);

impl Badge {
    /// The hash, hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its first 12 digits, for people reading a log.
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl std::fmt::Display for Badge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_badge_is_the_salted_hash_the_membership_dapp_stores_and_the_number_never_shows() {
        let salt = Salt::from_file("00112233445566778899aabbccddeeff\n").expect("salt");
        let card = CardNumber::from_digits("0012345678").expect("digits");
        assert_eq!(format!("{card:?}"), "CardNumber(<not shown>)");
        let badge = salt.badge(card);
        let mut h = blake3::Hasher::new();
        h.update(b"00112233445566778899aabbccddeeff0012345678");
        assert_eq!(badge.as_str(), h.finalize().to_hex().as_str());
        assert!(utter_membership::is_badge(badge.as_str()));
        assert!(!format!("{badge:?}").contains("12345678"));
        assert_eq!(
            salt.badge(CardNumber::from_value(12_345_678)),
            badge,
            "a decoded value is its 10-digit decimal form"
        );
        for bad in ["", "12a4", "123456789012345678901", "-1"] {
            assert!(CardNumber::from_digits(bad).is_none(), "{bad:?}");
        }
        assert!(Salt::from_file(" \n").is_none());
    }
}
