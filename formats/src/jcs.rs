//! Canonical JSON (RFC 8785, JCS): the bytes a transaction's signature
//! covers, every transaction line and every result line.
//!
//! Written straight from a [`serde_json::Value`]: object members sorted by
//! the UTF-16 code units of their names, numbers as ECMAScript prints the
//! double they denote (`ryu-js`), strings with only the escapes JSON
//! requires, no whitespace. It replaces `serde_json_canonicalizer`, which
//! gives the same bytes (its own tests are the oracle here) but re-parsed
//! every member name and buffered every member on its own: on a loaded
//! validator that was a twentieth of the CPU, spent on lines it had
//! already parsed.

use serde::Serialize;
use serde_json::Value;

/// The canonical bytes of `value`.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("plain data always serializes");
    value_to_vec(&value)
}

/// The canonical bytes of a parsed value.
pub fn value_to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write(&mut out, value);
    out
}

fn write(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // Every JSON number is a double (a u64 above 2^53 rounds, as
            // it does in JavaScript); a `Value` holds no NaN or infinity.
            let f = n.as_f64().expect("a JSON number is a double");
            out.extend_from_slice(ryu_js::Buffer::new().format_finite(f).as_bytes());
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            let by_utf16 = |a: &(&String, &Value), b: &(&String, &Value)| {
                a.0.encode_utf16().cmp(b.0.encode_utf16())
            };
            // serde_json's map is sorted by UTF-8 bytes, which is the same
            // order unless names mix characters above U+FFFF with ones in
            // U+E000..U+FFFF.
            if !members.is_sorted_by(|a, b| by_utf16(a, b).is_le()) {
                members.sort_by(by_utf16);
            }
            out.push(b'{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, name);
                out.push(b':');
                write(out, item);
            }
            out.push(b'}');
        }
    }
}

/// A JSON string: `"` and `\` escaped, control characters as `\b`, `\t`,
/// `\n`, `\f`, `\r` or `\u00xx` (lower-case hex), everything else as is.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x09 => b"\\t",
            0x0a => b"\\n",
            0x0c => b"\\f",
            0x0d => b"\\r",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small deterministic generator of JSON values.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn string(&mut self) -> String {
            const PIECES: &[&str] = &[
                "a",
                "b",
                "Z",
                "0",
                "_",
                " ",
                "\"",
                "\\",
                "/",
                "\u{0}",
                "\u{1}",
                "\u{8}",
                "\t",
                "\n",
                "\u{b}",
                "\u{c}",
                "\r",
                "\u{1f}",
                "\u{7f}",
                "é",
                "ß",
                "€",
                "\u{e000}",
                "\u{fffd}",
                "\u{ffff}",
                "😀",
                "𝄞",
                "中",
                "ssh-ed25519 AAAA",
                "+/=",
            ];
            let n = self.below(6);
            (0..n)
                .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
                .collect()
        }

        fn number(&mut self) -> Value {
            match self.below(8) {
                0 => json!(self.below(100)),
                1 => json!(self.next()),
                2 => json!(-(self.below(1 << 60) as i64)),
                3 => json!(i64::MIN),
                4 => json!(u64::MAX),
                5 => json!((self.next() as f64) / 1e9),
                6 => json!(f64::from_bits(self.next() >> 2)),
                _ => {
                    let edge = [
                        json!(0.1),
                        json!(1e21),
                        json!(1e-7),
                        json!(-0.0),
                        json!(5e-324),
                        json!(9_007_199_254_740_993u64),
                        json!(1e300),
                    ];
                    edge[self.below(edge.len() as u64) as usize].clone()
                }
            }
        }

        fn value(&mut self, depth: u32) -> Value {
            let pick = if depth == 0 {
                self.below(4)
            } else {
                self.below(6)
            };
            match pick {
                0 => Value::Null,
                1 => Value::Bool(self.below(2) == 1),
                2 => self.number(),
                3 => Value::String(self.string()),
                4 => Value::Array((0..self.below(5)).map(|_| self.value(depth - 1)).collect()),
                _ => Value::Object(
                    (0..self.below(6))
                        .map(|_| (self.string(), self.value(depth - 1)))
                        .collect(),
                ),
            }
        }
    }

    fn oracle(value: &Value) -> Vec<u8> {
        serde_json_canonicalizer::to_vec(value).expect("the oracle serializes it")
    }

    #[test]
    fn gives_the_bytes_serde_json_canonicalizer_gives_for_random_values() {
        let mut g = Gen(0x5eed_1234_abcd_ef01);
        for i in 0..30_000 {
            let v = g.value(4);
            assert_eq!(
                String::from_utf8_lossy(&value_to_vec(&v)),
                String::from_utf8_lossy(&oracle(&v)),
                "value {i}: {v:?}"
            );
        }
    }

    #[test]
    fn sorts_names_by_utf16_not_by_utf8() {
        // U+E000 is one UTF-16 unit above the surrogates U+1F600 is made
        // of, though its UTF-8 sorts first.
        let v = json!({"\u{e000}": 1, "😀": 2, "a": 3});
        let got = String::from_utf8(value_to_vec(&v)).unwrap();
        assert_eq!(got, "{\"a\":3,\"😀\":2,\"\u{e000}\":1}");
        assert_eq!(got.as_bytes(), oracle(&v));
    }

    #[test]
    fn numbers_print_as_the_double_they_denote() {
        let v = json!([1, 1.0, -0.0, 1e21, 1e-7, 123456789012345678u64, 0.1]);
        assert_eq!(
            String::from_utf8(value_to_vec(&v)).unwrap(),
            "[1,1,0,1e+21,1e-7,123456789012345680,0.1]"
        );
    }

    #[test]
    fn structs_serialize_through_their_value() {
        #[derive(Serialize)]
        struct S {
            zeta: u64,
            alpha: Option<String>,
            mid: Vec<bool>,
        }
        let s = S {
            zeta: 7,
            alpha: None,
            mid: vec![true],
        };
        assert_eq!(to_vec(&s), serde_json_canonicalizer::to_vec(&s).unwrap());
        assert_eq!(to_vec(&s), br#"{"alpha":null,"mid":[true],"zeta":7}"#);
    }
}
