//! Chunking parameters, fixed per store.

use std::fmt;
use std::str::FromStr;

use fastcdc::v2020::{
    AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
};

/// FastCDC 2020 minimum, average and maximum chunk sizes in bytes.
///
/// They decide where chunks are cut, so two stores only share chunks if they
/// share these. A store records them when it is created and refuses to open
/// with others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunking {
    /// Smallest chunk (except a blob's last).
    pub min: u32,
    /// Target average chunk size.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl Default for Chunking {
    /// 16/64/256 KiB.
    fn default() -> Self {
        Self {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        }
    }
}

/// Why chunking parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkingError {
    /// Not three sizes separated by `/`.
    #[error("{0:?} is not MIN/AVG/MAX (for example 16K/64K/256K)")]
    Syntax(String),
    /// A size outside what FastCDC 2020 supports, or not in order.
    #[error(
        "chunk sizes {0} are out of range: need MIN <= AVG <= MAX, all even, \
         MIN in 64..=1M, AVG in 256..=4M, MAX in 1K..=16M"
    )]
    Range(Chunking),
}

impl Chunking {
    /// Checks the sizes against FastCDC 2020's limits.
    pub fn validate(self) -> Result<Self, ChunkingError> {
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && min % 2 == 0
            && avg % 2 == 0
            && max % 2 == 0;
        if ok {
            Ok(self)
        } else {
            Err(ChunkingError::Range(self))
        }
    }

    pub(crate) fn encode(self) -> [u8; 12] {
        let mut out = [0u8; 12];
        out[..4].copy_from_slice(&self.min.to_le_bytes());
        out[4..8].copy_from_slice(&self.avg.to_le_bytes());
        out[8..].copy_from_slice(&self.max.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
        };
        if bytes.len() != 12 {
            return None;
        }
        Some(Self {
            min: word(0)?,
            avg: word(4)?,
            max: word(8)?,
        })
    }
}

fn size_to_string(n: u32) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

fn parse_size(s: &str) -> Option<u32> {
    let s = s.trim();
    let (digits, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        _ => (s, 0),
    };
    let n: u32 = digits.parse().ok()?;
    n.checked_mul(1 << shift)
}

impl fmt::Display for Chunking {
    /// `16K/64K/256K`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            size_to_string(self.min),
            size_to_string(self.avg),
            size_to_string(self.max)
        )
    }
}

impl FromStr for Chunking {
    type Err = ChunkingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ChunkingError::Syntax(s.to_owned());
        let mut parts = s.split('/').map(parse_size);
        let (Some(Some(min)), Some(Some(avg)), Some(Some(max)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(syntax());
        };
        Chunking { min, avg, max }.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_16_64_256() {
        assert_eq!(Chunking::default().to_string(), "16K/64K/256K");
        assert_eq!(
            "16K/64K/256K".parse::<Chunking>().unwrap(),
            Chunking::default()
        );
        assert_eq!(
            "16384/65536/262144".parse::<Chunking>().unwrap(),
            Chunking::default()
        );
    }

    #[test]
    fn encode_round_trip() {
        let c: Chunking = "2K/8K/1M".parse().unwrap();
        assert_eq!(Chunking::decode(&c.encode()), Some(c));
        assert_eq!(Chunking::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn rejects_out_of_range_and_garbage() {
        for bad in [
            "64K/16K/256K",
            "1/2/3",
            "16K/64K/32M",
            "16K/64K",
            "a/b/c",
            "16K/64K/256K/1M",
            "16385/65536/262144",
        ] {
            assert!(bad.parse::<Chunking>().is_err(), "{bad} accepted");
        }
    }
}
