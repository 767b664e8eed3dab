//! Keys and transactions, with `ssh-keygen` as the oracle.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::key::{Keypair, SignatureError, Signer};
use crate::tx::{MAX_LINE, NAMESPACE, SignedTx, Tx, TxError, verify_line};

fn tx_for(key: &Keypair, chain: &str, nonce: u64) -> Tx {
    Tx {
        v: 1,
        chain: chain.to_string(),
        dapp: "accounting".to_string(),
        action: "transfer".to_string(),
        args: json!({"to": "bob", "amount": 25, "memo": "tools fund ✓"}),
        signer: key.public().to_openssh(),
        nonce,
        time: 1_790_000_000,
    }
}

fn never_used(_: &str, _: u64) -> bool {
    false
}

fn ssh_keygen(args: &[&str], stdin: &Path) -> std::process::Output {
    Command::new("ssh-keygen")
        .args(args)
        .stdin(std::fs::File::open(stdin).unwrap())
        .output()
        .expect("ssh-keygen is installed (openssh-client)")
}

#[test]
fn canonical_form_is_rfc_8785() {
    let key = Keypair::generate("test").unwrap();
    let tx = tx_for(&key, "makerspace", 7);
    let bytes = String::from_utf8(tx.canonical_bytes()).unwrap();
    let expected = format!(
        r#"{{"action":"transfer","args":{{"amount":25,"memo":"tools fund ✓","to":"bob"}},"chain":"makerspace","dapp":"accounting","nonce":7,"signer":"{}","time":1790000000,"v":1}}"#,
        key.public()
    );
    assert_eq!(bytes, expected);
}

#[test]
fn a_signed_line_verifies_and_round_trips() {
    let key = Keypair::generate("test").unwrap();
    let stx = tx_for(&key, "makerspace", 1).sign(&key).unwrap();
    let line = stx.to_line();
    assert!(!line.contains('\n'), "one line");
    let back = verify_line(format!("{line}\n").as_bytes(), "makerspace", never_used).unwrap();
    // The signed bytes verification slices out of the line are exactly the
    // transaction's canonical form.
    assert_eq!(
        crate::tx::signed_part(line.as_bytes()),
        Some(&stx.tx.canonical_bytes()[..])
    );
    assert_eq!(back, stx);
    assert_eq!(back.id(), stx.id());
}

#[test]
fn ssh_keygen_accepts_our_signatures_and_we_accept_its() {
    let dir = tempfile::tempdir().unwrap();
    // Ours, checked by ssh-keygen.
    let key = Keypair::generate("node").unwrap();
    let stx = tx_for(&key, "makerspace", 3).sign(&key).unwrap();
    let msg = dir.path().join("msg");
    std::fs::write(&msg, stx.tx.canonical_bytes()).unwrap();
    std::fs::write(dir.path().join("sig"), &stx.sig).unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::write(
        &allowed,
        key.public()
            .allowed_signers_line("node@utter", &[NAMESPACE])
            + "\n",
    )
    .unwrap();
    let out = ssh_keygen(
        &[
            "-Y",
            "verify",
            "-f",
            allowed.to_str().unwrap(),
            "-I",
            "node@utter",
            "-n",
            NAMESPACE,
            "-s",
            dir.path().join("sig").to_str().unwrap(),
        ],
        &msg,
    );
    assert!(
        out.status.success(),
        "ssh-keygen refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A key made by ssh-keygen (a user's ~/.ssh/id_ed25519) signs through
    // ssh-keygen; utter loads the key and accepts the signature.
    let user = dir.path().join("id_ed25519");
    let made = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "alice@example",
            "-f",
            user.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let alice = Keypair::load(&user).unwrap();
    let tx = tx_for(&alice, "makerspace", 9);
    std::fs::write(&msg, tx.canonical_bytes()).unwrap();
    let out = ssh_keygen(
        &[
            "-Y",
            "sign",
            "-f",
            user.to_str().unwrap(),
            "-n",
            NAMESPACE,
            "-q",
        ],
        &msg,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sig = String::from_utf8(out.stdout).unwrap();
    let line = SignedTx { sig, tx }.to_line();
    verify_line(line.as_bytes(), "makerspace", never_used).unwrap();
    let public = std::fs::read_to_string(user.with_extension("pub")).unwrap();
    assert_eq!(Signer::parse(&public).unwrap(), alice.public());
}

#[test]
fn hostile_transactions_are_refused_with_their_reason() {
    let key = Keypair::generate("a").unwrap();
    let other = Keypair::generate("b").unwrap();
    let good = tx_for(&key, "makerspace", 5).sign(&key).unwrap();
    let line = good.to_line();
    let check = |l: &str| verify_line(l.as_bytes(), "makerspace", never_used);

    // Another chain.
    let foreign = tx_for(&key, "elsewhere", 5).sign(&key).unwrap().to_line();
    assert!(
        matches!(check(&foreign), Err(TxError::WrongChain { found, .. }) if found == "elsewhere")
    );

    // Tampered arguments (re-serialised canonically): the signature breaks.
    let mut tampered = good.clone();
    tampered.tx.args = json!({"to": "mallory", "amount": 25, "memo": "tools fund ✓"});
    assert!(matches!(
        check(&tampered.to_line()),
        Err(TxError::BadSignature(SignatureError::Invalid))
    ));

    // Signed by a key other than the one named as signer.
    let mut forged = tx_for(&key, "makerspace", 5).sign(&other).unwrap();
    forged.tx.signer = key.public().to_openssh();
    assert!(matches!(
        check(&forged.to_line()),
        Err(TxError::BadSignature(SignatureError::WrongKey))
    ));

    // Signed for another purpose.
    let mut wrong_ns = good.clone();
    wrong_ns.sig = key.sign("git", &good.tx.canonical_bytes()).unwrap();
    assert!(matches!(
        check(&wrong_ns.to_line()),
        Err(TxError::BadSignature(SignatureError::Namespace { .. }))
    ));

    // Not canonical: whitespace, reordered keys.
    let spaced = line.replacen(":", ": ", 1);
    assert_eq!(check(&spaced), Err(TxError::NotCanonical));
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    let reordered = format!(r#"{{"tx":{},"sig":{}}}"#, value["tx"], value["sig"]);
    assert_eq!(check(&reordered), Err(TxError::NotCanonical));

    // A replayed nonce.
    let replay = verify_line(line.as_bytes(), "makerspace", |signer, nonce| {
        signer == key.public().to_openssh() && nonce == 5
    });
    assert!(matches!(replay, Err(TxError::Replayed { nonce: 5, .. })));
    let reason = replay.expect_err("a replay").to_string();
    assert!(crate::tx::is_replay(&reason), "{reason}");
    for other in ["nonce x was already used by k", "the door is gone", ""] {
        assert!(!crate::tx::is_replay(other), "{other}");
    }

    // Truncated and oversized lines, extra fields, garbage signer.
    assert!(matches!(
        check(&line[..line.len() / 2]),
        Err(TxError::Malformed(_))
    ));
    let mut big = tx_for(&key, "makerspace", 6);
    big.args = json!({"blob": "x".repeat(MAX_LINE)});
    let big = big.sign(&key).unwrap().to_line();
    assert!(matches!(check(&big), Err(TxError::Oversized { .. })));
    let extra = line.replacen(r#""sig":"#, r#""extra":1,"sig":"#, 1);
    assert!(matches!(check(&extra), Err(TxError::Malformed(m)) if m.contains("extra")));
    let mut bad_signer = good.clone();
    bad_signer.tx.signer = "ssh-rsa AAAA not a key".into();
    assert!(matches!(
        check(&bad_signer.to_line()),
        Err(TxError::BadSigner(_))
    ));
    let mut commented = good.clone();
    commented.tx.signer = format!("{} alice@example", key.public());
    assert!(matches!(
        check(&commented.to_line()),
        Err(TxError::BadSigner(_))
    ));

    // Version and unsafe integers.
    let mut v2 = tx_for(&key, "makerspace", 5);
    v2.v = 2;
    assert_eq!(
        check(&v2.sign(&key).unwrap().to_line()),
        Err(TxError::Version(2))
    );
    let huge = tx_for(&key, "makerspace", 1 << 60)
        .sign(&key)
        .unwrap()
        .to_line();
    assert!(matches!(
        check(&huge),
        Err(TxError::Unsafe { field: "nonce", .. })
    ));
}

#[test]
fn keys_round_trip_through_openssh_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node");
    let key = Keypair::generate("node@utter").unwrap();
    key.save(&path).unwrap();
    assert_eq!(Keypair::load(&path).unwrap().public(), key.public());
    // ssh-keygen reads it and derives the same public key.
    let out = Command::new("ssh-keygen")
        .args(["-y", "-f", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        Signer::parse(&String::from_utf8(out.stdout).unwrap()).unwrap(),
        key.public()
    );
    let err = Keypair::load(&dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

/// The cached verifier (`Verifier`, used for every transaction line)
/// accepts and refuses exactly what `Signer::verify` (ssh-key's own check)
/// does, each refusal for the same reason: good signatures, other
/// messages, namespaces and keys, damaged armor, flipped signature bits,
/// an `s` past the group order, and a key that is no curve point.
#[test]
fn the_cached_verifier_agrees_with_ssh_key_on_every_case() {
    use ssh_key::{Algorithm, HashAlg, LineEnding, SshSig};

    use crate::key::Verifier;

    let key = Keypair::generate("").unwrap();
    let other = Keypair::generate("").unwrap();
    let msg = b"the message".as_slice();
    let good = key.sign(NAMESPACE, msg).unwrap();
    let parsed = SshSig::from_pem(&good).unwrap();
    let bytes = parsed.signature().as_bytes().to_vec();
    let forge = |data: ssh_key::public::KeyData, sig: Vec<u8>| -> String {
        let sig = ssh_key::Signature::new(Algorithm::Ed25519, sig).unwrap();
        SshSig::new(data, NAMESPACE, HashAlg::Sha512, sig)
            .unwrap()
            .to_pem(LineEnding::LF)
            .unwrap()
    };
    let data = parsed.public_key().clone();
    let mut cases: Vec<(String, &[u8], &str, Signer)> = vec![
        (good.clone(), msg, NAMESPACE, key.public()),
        (good.clone(), b"another message", NAMESPACE, key.public()),
        (good.clone(), msg, "git", key.public()),
        (key.sign("git", msg).unwrap(), msg, NAMESPACE, key.public()),
        (good.clone(), msg, NAMESPACE, other.public()),
        (good.replace('A', "B"), msg, NAMESPACE, key.public()),
        ("not a signature".into(), msg, NAMESPACE, key.public()),
    ];
    for bit in [0, 7, 100, 255, 256, 300, 511] {
        let mut sig = bytes.clone();
        sig[bit / 8] ^= 1 << (bit % 8);
        cases.push((forge(data.clone(), sig), msg, NAMESPACE, key.public()));
    }
    // s + L: the same signature with a scalar past the group order.
    let mut high = bytes.clone();
    let order: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(high[32 + i]) + u16::from(order[i]) + carry;
        high[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    cases.push((forge(data.clone(), high), msg, NAMESPACE, key.public()));
    // 32 bytes that decode to no point on the curve.
    let offcurve = (0u8..=255)
        .map(|b| {
            let mut k = [b; 32];
            k[31] &= 0x7f;
            k
        })
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .expect("some repeated byte is not a point");
    let bad = Signer::from_ed25519(offcurve);
    let bad_data = ssh_key::public::KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(offcurve));
    cases.push((forge(bad_data, bytes.clone()), msg, NAMESPACE, bad));

    let mut refused = 0;
    for (i, (armored, msg, namespace, signer)) in cases.iter().enumerate() {
        let oracle = signer.verify(namespace, msg, armored);
        let verifier = Verifier::of(&signer.to_openssh()).expect("an ed25519 key in its spelling");
        assert_eq!(verifier.verify(namespace, msg, armored), oracle, "case {i}");
        // And again, from the table.
        let again = Verifier::of(&signer.to_openssh()).unwrap();
        assert_eq!(
            again.verify(namespace, msg, armored),
            oracle,
            "case {i}, cached"
        );
        refused += usize::from(oracle.is_err());
    }
    assert_eq!(
        refused,
        cases.len() - 1,
        "only the first case is a good signature"
    );

    // Only the one spelling of an ed25519 key has a verifier.
    let spelled = key.public().to_openssh();
    assert!(Verifier::of(&format!("{spelled} alice@example")).is_none());
    assert!(Verifier::of(&format!(" {spelled}")).is_none());
    assert!(Verifier::of("ssh-rsa AAAAB3NzaC1yc2E").is_none());
    assert!(Verifier::of("").is_none());
}
