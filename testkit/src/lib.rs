//! Reproducible test data for utter's tests and benchmarks. A dev-dependency
//! only: no product crate links it.

use std::io::{self, Read};

/// An endless stream of incompressible bytes (xorshift64), the same for the
/// same seed.
#[derive(Debug, Clone)]
pub struct Noise {
    state: u64,
    /// Bytes of the current word not yet handed out.
    word: [u8; 8],
    used: usize,
}

impl Noise {
    /// A stream for `seed`; any seed works, including 0.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() && self.used < 8 {
            buf[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
        let mut words = buf[i..].chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            self.word = self.next_word().to_le_bytes();
            rest.copy_from_slice(&self.word[..rest.len()]);
            self.used = rest.len();
        }
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.fill(buf);
        Ok(buf.len())
    }
}

/// `len` incompressible bytes for `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0; len];
    Noise::new(seed).fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_of_any_size_give_the_same_stream() {
        let whole = noise(10_000, 42);
        let mut n = Noise::new(42);
        let mut pieces = Vec::new();
        for size in (1..200).cycle() {
            let mut buf = vec![0; size.min(10_000 - pieces.len())];
            n.fill(&mut buf);
            pieces.extend_from_slice(&buf);
            if pieces.len() == 10_000 {
                break;
            }
        }
        assert_eq!(pieces, whole);
        assert_ne!(noise(64, 1), noise(64, 2));
    }

    #[test]
    fn noise_does_not_compress() {
        let data = noise(1 << 16, 7);
        let distinct = data.iter().collect::<std::collections::HashSet<_>>().len();
        assert_eq!(distinct, 256);
    }
}
