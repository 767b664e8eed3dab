//! Hostile blocks: each is forged on top of `main` and verification must
//! name the block and the specific reason.

use gix::objs::tree::EntryKind;

use super::{CHAIN, Fixture, T0, dapp_config};
use crate::block::{self, BlockId};
use crate::key::{Keypair, SignatureError};
use crate::layout::StatePath;
use crate::pointer::Pointer;
use crate::tx::{MAX_LINE, SignedTx, TxError};
use crate::{BlockError, Change, Changes, Draft, TxResult};

/// A tree edit: (path, kind, bytes); `None` bytes removes the path.
type Edit<'a> = (&'a str, EntryKind, Option<&'a [u8]>);

/// Writes a commit on `parent` whose tree is the parent's with `edits`
/// applied, with `message` (default: a correct one) signed by `key`, and
/// points `main` at it.
fn forge(
    f: &Fixture,
    parent: BlockId,
    edits: &[Edit<'_>],
    message: Option<String>,
    key: Option<&Keypair>,
) -> BlockId {
    let repo = f.ledger.repo();
    let base = f.ledger.block(parent).unwrap();
    let mut editor = repo.edit_tree(base.tree).unwrap();
    for (path, kind, bytes) in edits {
        match bytes {
            Some(bytes) if *kind == EntryKind::Tree => {
                let id = gix::objs::Write::write_buf(&repo.objects, gix::objs::Kind::Tree, bytes)
                    .unwrap();
                editor.upsert(*path, *kind, id).unwrap();
            }
            Some(bytes) => {
                let id = repo.write_blob(bytes).unwrap().detach();
                editor.upsert(*path, *kind, id).unwrap();
            }
            None => {
                editor.remove(*path).unwrap();
            }
        }
    }
    let tree = editor.write().unwrap().detach();
    let message = message.unwrap_or_else(|| block::message("forged", base.height + 1, CHAIN));
    let id = f
        .ledger
        .write_commit(tree, &[parent], &message, T0 + base.height as i64 + 1, key)
        .unwrap();
    f.force_main(id);
    id
}

/// Block files with these transactions and results.
fn block_files(txs: &[String], results: &[String]) -> (Vec<u8>, Vec<u8>) {
    let lines = |v: &[String]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
    (lines(txs).into_bytes(), lines(results).into_bytes())
}

fn first_bad(f: &Fixture) -> (BlockId, BlockError) {
    let report = f.ledger.verify(None, true, |_, _| {}).unwrap();
    let bad = report.first_bad().expect("verification must fail");
    (bad.id, bad.verdict.clone().unwrap_err())
}

fn tip(f: &Fixture) -> BlockId {
    f.ledger.branch("main").unwrap().unwrap()
}

#[test]
fn an_unsigned_block_is_refused() {
    let f = Fixture::new();
    let id = forge(&f, f.genesis.id, &[], None, None);
    assert_eq!(first_bad(&f), (id, BlockError::NotSigned));
}

#[test]
fn a_block_changed_after_signing_is_refused() {
    let f = Fixture::new();
    let good = f.block(&[f.genesis.id], Changes::new(), vec![]);
    let repo = f.ledger.repo();
    let bytes = repo.find_object(block::oid(good.id)).unwrap().detach().data;
    let text = String::from_utf8(bytes).unwrap();
    let tampered = text.replace("block 1", "block 1, says the attacker");
    assert_ne!(tampered, text);
    let id =
        gix::objs::Write::write_buf(&repo.objects, gix::objs::Kind::Commit, tampered.as_bytes())
            .unwrap();
    f.force_main(block::block_id(&id));
    assert_eq!(
        first_bad(&f),
        (
            block::block_id(&id),
            BlockError::Signature(SignatureError::Invalid)
        )
    );

    // A signature that is not an SSH signature at all.
    let garbled = text.replace(
        "-----BEGIN SSH SIGNATURE-----",
        "-----BEGIN PGP SIGNATURE-----",
    );
    let id =
        gix::objs::Write::write_buf(&repo.objects, gix::objs::Kind::Commit, garbled.as_bytes())
            .unwrap();
    f.force_main(block::block_id(&id));
    assert_eq!(
        first_bad(&f),
        (
            block::block_id(&id),
            BlockError::Signature(SignatureError::Malformed)
        )
    );
}

#[test]
fn a_block_by_an_unknown_key_is_refused() {
    let f = Fixture::new();
    let stranger = Keypair::generate("stranger").unwrap();
    let id = forge(&f, f.genesis.id, &[], None, Some(&stranger));
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, id);
    assert_eq!(
        err,
        BlockError::UnknownSigner(stranger.public().to_openssh())
    );
    assert!(err.to_string().contains("not a validator or device"));
}

#[test]
fn a_wrong_height_trailer_is_refused() {
    let f = Fixture::new();
    let b1 = f.block(&[f.genesis.id], Changes::new(), vec![]);
    f.force_main(b1.id);
    let msg = block::message("skip ahead", 5, CHAIN);
    let id = forge(&f, b1.id, &[], Some(msg), Some(&f.key));
    assert_eq!(
        first_bad(&f),
        (
            id,
            BlockError::Height {
                claimed: 5,
                expected: 2
            }
        )
    );
    // A plain-git message without trailers.
    let id = forge(&f, b1.id, &[], Some("fix typo\n".into()), Some(&f.key));
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, id);
    assert!(matches!(err, BlockError::Message(_)), "{err}");
    // Another chain's trailer.
    let msg = block::message("elsewhere", 2, "other-chain");
    let id = forge(&f, b1.id, &[], Some(msg), Some(&f.key));
    assert_eq!(
        first_bad(&f),
        (
            id,
            BlockError::Chain {
                expected: CHAIN.into(),
                found: "other-chain".into()
            }
        )
    );
}

#[test]
fn tree_entries_outside_the_layout_are_refused() {
    let toml = dapp_config().to_toml();
    let cases: Vec<(Vec<Edit<'_>>, &str)> = vec![
        (
            vec![("notes.txt", EntryKind::Blob, Some(b"hi"))],
            "notes.txt",
        ),
        (
            vec![("block/extra", EntryKind::Blob, Some(b"x"))],
            "block/extra",
        ),
        (
            vec![("block/txs.jsonl", EntryKind::Blob, None)],
            "block/txs.jsonl",
        ),
        (
            vec![("dapps/doors/state/x", EntryKind::Blob, Some(b"x"))],
            "dapps/doors/dapp.toml",
        ),
        (
            vec![
                (
                    "dapps/doors/dapp.toml",
                    EntryKind::Blob,
                    Some(toml.as_bytes()),
                ),
                (
                    "dapps/doors/state/link",
                    EntryKind::Link,
                    Some(b"/etc/passwd"),
                ),
            ],
            "dapps/doors/state/link",
        ),
        (
            vec![
                (
                    "dapps/doors/dapp.toml",
                    EntryKind::Blob,
                    Some(toml.as_bytes()),
                ),
                (
                    "dapps/doors/state/run.sh",
                    EntryKind::BlobExecutable,
                    Some(b"#!"),
                ),
            ],
            "dapps/doors/state/run.sh",
        ),
        (
            vec![(
                "dapps/doors/dapp.toml",
                EntryKind::Blob,
                Some(b"image = 'latest'"),
            )],
            "dapps/doors/dapp.toml",
        ),
        (
            vec![(
                "dapps/Bad Name/dapp.toml",
                EntryKind::Blob,
                Some(toml.as_bytes()),
            )],
            "dapps/Bad Name",
        ),
        (
            vec![("chain.toml", EntryKind::Blob, Some(b"chain = 'x'"))],
            "chain.toml",
        ),
    ];
    for (edits, expected_path) in cases {
        let f = Fixture::new();
        let id = forge(&f, f.genesis.id, &edits, None, Some(&f.key));
        let (bad, err) = first_bad(&f);
        assert_eq!(bad, id);
        match err {
            BlockError::Layout { path, .. } => assert_eq!(path, expected_path, "{edits:?}"),
            other => panic!("{expected_path}: expected a layout error, got {other}"),
        }
    }
}

#[test]
fn a_dotgit_name_in_state_is_refused() {
    let f = Fixture::new();
    let toml = dapp_config().to_toml();
    // gix refuses to write such a tree, so write its bytes by hand.
    let blob = f.ledger.repo().write_blob(b"x").unwrap().detach();
    let mut state = b"100644 .GIT\0".to_vec();
    state.extend_from_slice(blob.as_bytes());
    let id = forge(
        &f,
        f.genesis.id,
        &[
            (
                "dapps/doors/dapp.toml",
                EntryKind::Blob,
                Some(toml.as_bytes()),
            ),
            ("dapps/doors/state", EntryKind::Tree, Some(&state)),
        ],
        None,
        Some(&f.key),
    );
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, id);
    assert!(
        matches!(&err, BlockError::Layout { path, .. } if path == "dapps/doors/state/.GIT"),
        "{err}"
    );
}

fn with_txs(f: &Fixture, txs: &[String], results: &[String]) -> BlockId {
    let (t, r) = block_files(txs, results);
    forge(
        f,
        tip(f),
        &[
            ("block/txs.jsonl", EntryKind::Blob, Some(&t)),
            ("block/results.jsonl", EntryKind::Blob, Some(&r)),
        ],
        None,
        Some(&f.key),
    )
}

fn accepted(line: &str) -> String {
    TxResult::accepted(crate::TxId::of_line(line)).to_line()
}

#[test]
fn a_transaction_for_another_chain_is_refused() {
    let f = Fixture::new();
    let mut tx = f.tx(&f.key, 1).tx;
    tx.chain = "other-chain".into();
    let line = tx.sign(&f.key).unwrap().to_line();
    let id = with_txs(&f, std::slice::from_ref(&line), &[accepted(&line)]);
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, id);
    assert!(
        matches!(
            err,
            BlockError::Tx {
                line: 1,
                error: TxError::WrongChain { .. }
            }
        ),
        "{err}"
    );
}

#[test]
fn a_replayed_nonce_is_refused_unless_recorded_as_rejected() {
    let f = Fixture::new();
    let tx = f.tx(&f.key, 1);
    let b1 = f.block(&[f.genesis.id], Changes::new(), vec![tx.clone()]);
    f.force_main(b1.id);
    let line = tx.to_line();
    // Accepted again in a later block: invalid.
    let id = with_txs(&f, std::slice::from_ref(&line), &[accepted(&line)]);
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, id);
    assert_eq!(
        err,
        BlockError::Replayed {
            line: 1,
            signer: f.key.public().to_openssh(),
            nonce: 1
        }
    );
    // Twice in one block: the second is the replay.
    f.force_main(f.genesis.id);
    let id = with_txs(
        &f,
        &[line.clone(), line.clone()],
        &[accepted(&line), accepted(&line)],
    );
    assert_eq!(first_bad(&f).0, id);
    assert!(matches!(
        first_bad(&f).1,
        BlockError::Replayed { line: 2, .. }
    ));
    // Recorded as rejected (as a merge does): valid.
    f.force_main(b1.id);
    let rejected = TxResult::rejected(tx.id(), "replayed").to_line();
    with_txs(&f, &[line], &[rejected]);
    let report = f.ledger.verify(None, true, |_, _| {}).unwrap();
    assert!(report.first_bad().is_none(), "{:?}", report.first_bad());
}

#[test]
fn truncated_and_oversized_transaction_lines_are_refused() {
    let f = Fixture::new();
    let line = f.tx(&f.key, 1).to_line();
    let cut = line[..line.len() / 2].to_string();
    let id = with_txs(&f, std::slice::from_ref(&cut), &[accepted(&cut)]);
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, id);
    assert!(
        matches!(
            err,
            BlockError::Tx {
                line: 1,
                error: TxError::Malformed(_)
            }
        ),
        "{err}"
    );

    let f = Fixture::new();
    let mut tx = f.tx(&f.key, 1).tx;
    tx.args = serde_json::json!({ "blob": "x".repeat(MAX_LINE) });
    let big = SignedTx {
        sig: f
            .key
            .sign(crate::tx::NAMESPACE, &tx.canonical_bytes())
            .unwrap(),
        tx,
    }
    .to_line();
    let id = with_txs(&f, std::slice::from_ref(&big), &[accepted(&big)]);
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, id);
    assert!(
        matches!(
            err,
            BlockError::Tx {
                line: 1,
                error: TxError::Oversized { .. }
            }
        ),
        "{err}"
    );
}

#[test]
fn results_that_do_not_match_the_transactions_are_refused() {
    let f = Fixture::new();
    let line = f.tx(&f.key, 1).to_line();
    let other = f.tx(&f.key, 2).to_line();
    for results in [
        vec![],
        vec![accepted(&other)],
        vec!["{\"tx\":1}".to_string()],
    ] {
        f.force_main(f.genesis.id);
        let id = with_txs(&f, std::slice::from_ref(&line), &results);
        let (bad, err) = first_bad(&f);
        assert_eq!(bad, id);
        assert!(matches!(err, BlockError::Results(_)), "{err}");
    }
}

#[test]
fn a_pointer_to_a_missing_manifest_is_refused() {
    let f = Fixture::new();
    let toml = dapp_config().to_toml();
    let pointer = Pointer {
        manifest: utter_chunkstore::ManifestId::of(b"never stored"),
        size: 1 << 20,
    }
    .encode();
    let id = forge(
        &f,
        f.genesis.id,
        &[
            (
                "dapps/doors/dapp.toml",
                EntryKind::Blob,
                Some(toml.as_bytes()),
            ),
            ("dapps/doors/state/photo", EntryKind::Blob, Some(&pointer)),
        ],
        None,
        Some(&f.key),
    );
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, id);
    assert!(
        matches!(&err, BlockError::MissingValue { path, .. } if path == "dapps/doors/state/photo"),
        "{err}"
    );
    // The ledger API never writes such a pointer.
    let mut c = Changes::new();
    c.state(
        "doors",
        &StatePath::new("photo").unwrap(),
        Change::Pointer(Pointer::decode(&pointer).unwrap()),
    )
    .unwrap();
    let draft = Draft {
        parents: vec![f.genesis.id],
        changes: c,
        txs: vec![],
        results: vec![],
        text: "x".into(),
        time: T0,
        round: None,
    };
    assert!(f.ledger.write_block(&draft, &f.key).is_err());
}

#[test]
fn a_second_genesis_and_children_of_bad_blocks_are_refused() {
    let f = Fixture::new();
    let tree = f.ledger.block(f.genesis.id).unwrap().tree;
    let msg = block::message("another beginning", 0, CHAIN);
    let root = f
        .ledger
        .write_commit(tree, &[], &msg, T0, Some(&f.key))
        .unwrap();
    f.ledger.create_branch("rival", root).unwrap();
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, root);
    assert_eq!(err, BlockError::SecondGenesis(f.genesis.id.to_string()));

    // Every block after a bad one is reported, each naming why.
    let f = Fixture::new();
    let unsigned = forge(&f, f.genesis.id, &[], None, None);
    let child = f.block(&[unsigned], Changes::new(), vec![]);
    f.force_main(child.id);
    let report = f.ledger.verify(None, false, |_, _| {}).unwrap();
    let verdicts: Vec<_> = report.blocks.iter().map(|b| b.verdict.clone()).collect();
    assert_eq!(
        verdicts,
        [
            Ok(()),
            Err(BlockError::NotSigned),
            Err(BlockError::BadParent(unsigned.to_string()))
        ]
    );
}

#[test]
fn a_block_dated_before_its_parent_is_refused_and_never_written() {
    let f = Fixture::new();
    let b1 = f.block(&[f.genesis.id], Changes::new(), vec![]);
    // The ledger does not write one.
    let draft = Draft {
        parents: vec![b1.id],
        changes: Changes::new(),
        txs: vec![],
        results: vec![],
        text: "back in time".into(),
        time: b1.time - 1,
        round: None,
    };
    let err = f.ledger.write_block(&draft, &f.key).unwrap_err();
    assert!(err.to_string().contains("before its parent"), "{err}");
    // One made by hand is refused by verification, naming both times.
    let message = block::message("back in time", 2, CHAIN);
    let early = f
        .ledger
        .write_commit(b1.tree, &[b1.id], &message, b1.time - 1, Some(&f.key))
        .unwrap();
    f.force_main(early);
    assert_eq!(
        first_bad(&f),
        (
            early,
            BlockError::Time {
                time: b1.time - 1,
                parent: b1.id.to_string(),
                parent_time: b1.time,
            }
        )
    );
}

#[test]
fn a_missing_parent_object_is_reported_not_a_crash() {
    let f = Fixture::new();
    let b1 = f.block(&[f.genesis.id], Changes::new(), vec![]);
    let b2 = f.block(&[b1.id], Changes::new(), vec![]);
    f.force_main(b2.id);
    // b1 changed nothing, so its pack holds its commit alone: remove it.
    let packs = f.repo_path().join("objects/pack");
    let holding: Vec<_> = std::fs::read_dir(&packs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some("idx".as_ref()))
        .filter(|p| {
            let index = gix_pack::index::File::at(p, gix::hash::Kind::Sha1).unwrap();
            index.lookup(block::oid(b1.id)).is_some()
        })
        .collect();
    assert_eq!(holding.len(), 1, "{holding:?}");
    let index = gix_pack::index::File::at(&holding[0], gix::hash::Kind::Sha1).unwrap();
    assert_eq!(index.num_objects(), 1, "b1's pack holds only its commit");
    std::fs::remove_file(&holding[0]).unwrap();
    std::fs::remove_file(holding[0].with_extension("pack")).unwrap();
    // A fresh open: the first ledger's object cache still holds the block.
    let ledger = crate::Ledger::open(&f.repo_path(), f.ledger.chunks().clone()).unwrap();
    let report = ledger.verify(None, false, |_, _| {}).unwrap();
    let bad = report.first_bad().unwrap();
    assert_eq!(bad.id, b1.id);
    assert!(matches!(bad.verdict, Err(BlockError::Unreadable(_))));
    let last = report.blocks.last().unwrap();
    assert_eq!(last.id, b2.id);
    assert_eq!(last.verdict, Err(BlockError::BadParent(b1.id.to_string())));
}

/// Blocks on main's tip, each with one good transaction: enough that the
/// signature checks run ahead of the walk on a thread of their own.
fn long_chain(f: &Fixture) -> BlockId {
    let mut tip = f.genesis.id;
    for n in 0..crate::precheck::MIN_BLOCKS as u64 + 6 {
        tip = f
            .block(&[tip], Changes::new(), vec![f.tx(&f.key, n + 1)])
            .id;
    }
    f.force_main(tip);
    tip
}

#[test]
fn in_a_long_chain_a_tampered_block_and_a_forged_signature_are_refused() {
    // A commit changed after signing, on top of a long good chain.
    let f = Fixture::new();
    let good = long_chain(&f);
    let block = f.block(&[good], Changes::new(), vec![]);
    let repo = f.ledger.repo();
    let text = String::from_utf8(
        repo.find_object(block::oid(block.id))
            .unwrap()
            .detach()
            .data,
    )
    .unwrap();
    let tampered = text.replace("block ", "block, says the attacker, ");
    assert_ne!(tampered, text);
    let id =
        gix::objs::Write::write_buf(&repo.objects, gix::objs::Kind::Commit, tampered.as_bytes())
            .unwrap();
    f.force_main(block::block_id(&id));
    let report = f.ledger.verify(None, false, |_, _| {}).unwrap();
    assert_eq!(
        report.blocks.iter().filter(|b| b.verdict.is_ok()).count(),
        71
    );
    assert_eq!(
        first_bad(&f),
        (
            block::block_id(&id),
            BlockError::Signature(SignatureError::Invalid)
        )
    );

    // A transaction whose signature is another transaction's.
    let f = Fixture::new();
    long_chain(&f);
    let honest = f.tx(&f.key, 1_000);
    let mut forged = f.tx(&f.key, 1_001);
    forged.sig = honest.sig.clone();
    let line = forged.to_line();
    let id = with_txs(&f, std::slice::from_ref(&line), &[accepted(&line)]);
    let (bad, err) = first_bad(&f);
    assert_eq!(bad, id);
    assert!(
        matches!(
            err,
            BlockError::Tx {
                line: 1,
                error: TxError::BadSignature(_)
            }
        ),
        "{err}"
    );
}
