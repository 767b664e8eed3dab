//! The built-in dapps, each a static executable `build.rs` builds and this
//! binary carries; `utter init` packages each as an image.

/// (name, executable) of every built-in dapp.
pub const BUILTIN: [(&str, &[u8]); 6] = [
    (
        "membership",
        include_bytes!(concat!(env!("OUT_DIR"), "/membership")),
    ),
    (
        "certifications",
        include_bytes!(concat!(env!("OUT_DIR"), "/certifications")),
    ),
    ("doors", include_bytes!(concat!(env!("OUT_DIR"), "/doors"))),
    (
        "accounting",
        include_bytes!(concat!(env!("OUT_DIR"), "/accounting")),
    ),
    (
        "leases",
        include_bytes!(concat!(env!("OUT_DIR"), "/leases")),
    ),
    (
        "invariants",
        include_bytes!(concat!(env!("OUT_DIR"), "/invariants")),
    ),
];

/// The built-in test dapp `utter init` lists in `chain.toml`.
pub const BUILTIN_TEST_DAPP: &str = "invariants";
