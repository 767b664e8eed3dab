//! Commit certificates: stored as git notes `git notes` reads, votes
//! `ssh-keygen -Y verify` accepts, checked against the block's validator
//! set (its parents' `chain.toml` with the highest epoch; both quorums
//! while a change is under way).

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
    c.epoch = 1;
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
fn a_validator_set_change_is_joint_until_completed_and_counts_from_the_next_height() {
    let f = Fixture::new();
    let l = &f.ledger;
    let new: Vec<Keypair> = (0..3)
        .map(|i| Keypair::generate(&format!("n{i}")).unwrap())
        .collect();
    let genesis = l.chain_config(&f.genesis).unwrap();
    let mut desired = set(&[("n0", &new[0]), ("n1", &new[1]), ("n2", &new[2])]);
    desired.epoch = 0;
    // Block 1 moves to the three new validators: a joint set, with the
    // node key outgoing.
    let joint = genesis.next(&desired);
    assert_eq!((joint.epoch, joint.outgoing.len()), (1, 1));
    let mut c = Changes::new();
    c.set_chain(&joint).unwrap();
    let b1 = f.block(&[f.genesis.id], c, vec![]);
    let b2 = f.block(&[b1.id], Changes::new(), vec![]);
    let check = |b: &Block, keys: &[&Keypair]| l.check_certificate(b, &cert(b, keys)).unwrap();
    // Block 1 is certified by the set before it.
    assert!(check(&b1, &[&f.key]).is_ok());
    assert!(check(&b1, &[&new[0], &new[1], &new[2]]).is_err());
    // Block 2 needs both quorums.
    assert_eq!(
        check(&b2, &[&new[0], &new[1], &new[2]]),
        Err(CertError::TooFewOutgoing {
            found: 0,
            quorum: 1
        })
    );
    assert_eq!(
        check(&b2, &[&f.key, &new[0]]),
        Err(CertError::TooFew {
            found: 1,
            quorum: 3
        })
    );
    assert!(check(&b2, &[&new[0], &f.key, &new[1], &new[2]]).is_ok());
    // Block 3 completes the change; block 4 on is the new set's alone.
    let done = joint.next(&desired);
    assert_eq!((done.epoch, done.outgoing.len()), (2, 0));
    let mut c = Changes::new();
    c.set_chain(&done).unwrap();
    let b3 = f.block(&[b2.id], c, vec![]);
    let b4 = f.block(&[b3.id], Changes::new(), vec![]);
    assert!(check(&b3, &[&f.key, &new[0], &new[1], &new[2]]).is_ok());
    assert!(check(&b4, &[&new[0], &new[1], &new[2]]).is_ok());
    assert!(matches!(
        check(&b4, &[&f.key, &new[0], &new[1], &new[2]]),
        Err(CertError::NotValidator { vote: 1, .. })
    ));
    // A merge is certified by the parent with the highest epoch.
    let side = f.block(&[f.genesis.id], Changes::new(), vec![]);
    let mut parents = [side.id, b4.id];
    parents.sort();
    let merge = f.block(&parents, Changes::new(), vec![]);
    assert_eq!(l.validators_of(&merge).unwrap(), Ok(done.clone()));
}
