//! Commit certificates: stored as git notes `git notes` reads, votes
//! `ssh-keygen -Y verify` accepts, checked against the block's validator
//! set (its first parent's `chain.toml`).

use std::process::Command;

use super::*;
use crate::cert::{CertError, Certificate, NOTES_REF, SignedVote, VOTE_NAMESPACE, vote_message};

fn member(name: &str, key: &Keypair) -> Member {
    Member {
        name: name.into(),
        key: key.public().to_openssh(),
    }
}

fn set(keys: &[(&str, &Keypair)]) -> ChainConfig {
    let mut c = ChainConfig::single(CHAIN, keys[0].0, &keys[0].1.public());
    c.validators = keys.iter().map(|(n, k)| member(n, k)).collect();
    c.quorum = ChainConfig::min_quorum(keys.len());
    c
}

fn cert(block: &Block, keys: &[&Keypair]) -> Certificate {
    Certificate {
        chain: CHAIN.into(),
        block: block.id,
        height: block.height,
        votes: keys
            .iter()
            .map(|k| SignedVote::sign(k, CHAIN, block.id, block.height).unwrap())
            .collect(),
    }
}

#[test]
fn certificates_are_git_notes_checked_against_the_validator_set() {
    let f = Fixture::new();
    let l = &f.ledger;
    let keys: Vec<Keypair> = (0..4)
        .map(|i| Keypair::generate(&format!("v{i}")).unwrap())
        .collect();
    // Block 1 sets three validators (quorum 3): they certify block 2 on.
    let mut c = Changes::new();
    c.set_chain(&set(&[("a", &keys[0]), ("b", &keys[1]), ("c", &keys[2])]))
        .unwrap();
    let b1 = f.block(&[f.genesis.id], c, vec![]);
    let b2 = f.block(&[b1.id], Changes::new(), vec![]);

    let good = cert(&b2, &[&keys[2], &keys[0], &keys[1]]);
    assert_eq!(
        l.check_certificate(&b2, &good).unwrap(),
        Ok(vec!["c".to_string(), "a".into(), "b".into()])
    );
    let refused = |c: &Certificate| l.check_certificate(&b2, c).unwrap().unwrap_err();
    assert_eq!(
        refused(&cert(&b2, &[&keys[0], &keys[1]])),
        CertError::TooFew {
            found: 2,
            quorum: 3
        }
    );
    assert!(matches!(
        refused(&cert(&b2, &[&keys[0], &keys[1], &keys[3]])),
        CertError::NotValidator { vote: 3, .. }
    ));
    assert_eq!(
        refused(&cert(&b2, &[&keys[0], &keys[1], &keys[0]])),
        CertError::Twice("a".into())
    );
    // A vote for another block does not count for this one.
    let mut stolen = good.clone();
    stolen.votes[1] = SignedVote::sign(&keys[0], CHAIN, b1.id, b2.height).unwrap();
    assert!(matches!(
        refused(&stolen),
        CertError::BadVote { vote: 2, .. }
    ));
    // Nor for another height or chain.
    let mut moved = good.clone();
    moved.height = 7;
    assert!(matches!(refused(&moved), CertError::Elsewhere(_)));
    // Block 1 itself was certified by genesis's set (the one node key).
    assert!(
        l.check_certificate(&b1, &cert(&b1, &[&f.key]))
            .unwrap()
            .is_ok()
    );
    assert!(
        l.check_certificate(&b1, &cert(&b1, &keys[..3].iter().collect::<Vec<_>>()))
            .unwrap()
            .is_err()
    );

    // Stored as a note; a bad one is refused before it is stored.
    assert_eq!(l.certificate(b2.id).unwrap(), None);
    assert!(l.write_certificate(&cert(&b2, &[&keys[0]])).is_err());
    l.write_certificate(&good).unwrap();
    l.write_certificate(&cert(&b1, &[&f.key])).unwrap();
    assert_eq!(l.certificate(b2.id).unwrap(), Some(good.clone()));
    // Git reads the notes; its text is the certificate.
    let git_notes = Command::new("git")
        .arg("--git-dir")
        .arg(f.repo_path())
        .args(["notes", "--ref", NOTES_REF, "show", &b2.id.to_string()])
        .output()
        .unwrap();
    assert!(git_notes.status.success(), "{git_notes:?}");
    assert_eq!(String::from_utf8(git_notes.stdout).unwrap(), good.encode());
    // ssh-keygen verifies every vote over the certificate's first lines.
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let lines: String = keys[..3]
        .iter()
        .enumerate()
        .map(|(i, k)| {
            k.public()
                .allowed_signers_line(&format!("v{i}"), &[VOTE_NAMESPACE])
                + "\n"
        })
        .collect();
    std::fs::write(&allowed, lines).unwrap();
    let message = vote_message(CHAIN, b2.id, b2.height);
    assert!(good.encode().starts_with(&message));
    for (vote, who) in good.votes.iter().zip(["v2", "v0", "v1"]) {
        let sig = tmp.path().join("vote.sig");
        std::fs::write(&sig, format!("{}\n", vote.signature)).unwrap();
        let out = with_stdin(
            Command::new("ssh-keygen")
                .args(["-Y", "verify", "-n", VOTE_NAMESPACE, "-I", who, "-f"])
                .arg(&allowed)
                .arg("-s")
                .arg(&sig),
            message.as_bytes(),
        );
        assert!(out.status.success(), "ssh-keygen: {out:?}");
    }

    // A note that is not a certificate is an error, not a crash.
    let text = good.encode().replace("utter vote v1", "utter vote v2");
    assert!(Certificate::parse(&text).is_err());
    assert!(Certificate::parse("").is_err());
    assert!(Certificate::parse(&good.encode().replace("END SSH", "XND SSH")).is_err());
}

#[test]
fn a_validator_set_change_takes_effect_from_the_next_height() {
    let f = Fixture::new();
    let l = &f.ledger;
    let new = Keypair::generate("new").unwrap();
    // Block 1 replaces the node key with a new validator.
    let mut c = Changes::new();
    c.set_chain(&set(&[("new", &new)])).unwrap();
    let b1 = f.block(&[f.genesis.id], c, vec![]);
    let b2 = f.block(&[b1.id], Changes::new(), vec![]);
    // Block 1 is certified by the set before it; block 2 by the new one.
    assert!(
        l.check_certificate(&b1, &cert(&b1, &[&f.key]))
            .unwrap()
            .is_ok()
    );
    assert!(
        l.check_certificate(&b1, &cert(&b1, &[&new]))
            .unwrap()
            .is_err()
    );
    assert!(
        l.check_certificate(&b2, &cert(&b2, &[&new]))
            .unwrap()
            .is_ok()
    );
    assert!(
        l.check_certificate(&b2, &cert(&b2, &[&f.key]))
            .unwrap()
            .is_err()
    );
}
