//! Sync between real nodes in one process (QUIC on loopback, real
//! ledgers and stores), and one hostile peer per way a peer can lie: each
//! ends with a clear error, the peer at fault, and nothing stored or moved.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use utter_chunkstore::ChunkId;
use utter_formats::{BlockId, Keypair};
use utter_ledger::cert::{Certificate, SignedVote};
use utter_ledger::{Draft, Ledger};
use utter_net::sync::{Fault, NOTES_REF};
use utter_net::tls::Gate;
use utter_net::wire::{Message, What};
use utter_net::{ALPN_CHUNKS, ALPN_SYNC, Endpoint, Identity, NetError, PassError};

/// How a hostile server lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lie {
    /// The first chunk of each answer has a flipped byte.
    WrongChunk,
    /// Packs stop half-way.
    TruncatedPack,
    /// The heads answer announces a 64 MiB frame.
    HugeFrame,
    /// A well-formed pack goes on for 2 GiB.
    EndlessPack,
    /// Its pack is one blob that inflates to 1 GiB.
    Bomb,
    /// A pack header, then nothing.
    Stall,
    /// It advertises this block as its main.
    Main(BlockId),
}

/// Serves `node`'s data, lying as `lie` says.
fn hostile(rt: &tokio::runtime::Runtime, node: &Node, lie: Lie) -> SocketAddr {
    let _guard = rt.enter();
    let endpoint = Endpoint::serve(
        "127.0.0.1:0".parse().unwrap(),
        Identity::new(&node.key).unwrap(),
        &[ALPN_SYNC, ALPN_CHUNKS],
        utter_net::tls::open_gate(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let source = Arc::new(node.source());
    rt.spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let source = source.clone();
            tokio::spawn(async move {
                let Ok((conn, _)) = incoming.connected().await else {
                    return;
                };
                while let Some(Ok((request, mut reply))) = conn.next_request().await {
                    let source = source.clone();
                    tokio::spawn(async move {
                        let work = {
                            let source = source.clone();
                            let request = request.clone();
                            move || answer(&source, &request, lie)
                        };
                        let (frames, raw) = tokio::task::spawn_blocking(work).await.unwrap();
                        for f in frames {
                            if reply.bytes(&f).await.is_err() {
                                return;
                            }
                        }
                        match (lie, raw) {
                            (Lie::Stall, Some(_)) => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                            (Lie::EndlessPack, Some(_)) => {
                                let (header, entry) = endless_pack();
                                if reply.bytes(&header).await.is_err() {
                                    return;
                                }
                                for _ in 0..2048 {
                                    if reply.bytes(&entry).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            (Lie::Bomb, Some(_)) => {
                                let _ = reply.bytes(&bomb_pack(1 << 30)).await;
                            }
                            (Lie::TruncatedPack, Some(pack)) => {
                                let _ = reply.bytes(&pack[..pack.len() / 2]).await;
                            }
                            (_, Some(pack)) => {
                                let _ = reply.bytes(&pack).await;
                            }
                            (_, None) => {}
                        }
                        reply.finish();
                    });
                }
            });
        }
    });
    addr
}

/// The frames (encoded) and the pack bytes a hostile server answers with.
fn answer(
    source: &utter_net::serve::Source,
    request: &Message,
    lie: Lie,
) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
    let ledger = Ledger::open(&source.ledger_dir, Arc::new(source.store.clone())).unwrap();
    match request {
        Message::Heads if lie == Lie::HugeFrame => {
            let mut f = (64u32 << 20).to_be_bytes().to_vec();
            f.push(0x81);
            (vec![f], None)
        }
        Message::Heads => {
            let mut refs = ledger.shared_refs().unwrap();
            if let Lie::Main(id) = lie {
                for (name, r) in &mut refs {
                    if name == "refs/heads/main" {
                        *r = id;
                    }
                }
            }
            let m = Message::HeadsAre {
                chain: ledger.chain().into(),
                genesis: ledger.genesis(),
                refs,
            };
            (vec![m.encode()], None)
        }
        Message::Blocks { wants, haves, .. } => {
            let plan = ledger.plan_blocks(wants, haves, 32 << 20).unwrap();
            pack(&ledger, plan)
        }
        Message::Notes { want, haves } => pack(&ledger, ledger.plan_notes(*want, haves).unwrap()),
        Message::Manifests(ids) => (
            ids.iter()
                .map(|h| {
                    let m = source
                        .store
                        .manifest(&utter_chunkstore::ManifestId(*h))
                        .unwrap();
                    Message::Manifest {
                        id: *h,
                        encoded: m.encode(),
                    }
                    .encode()
                })
                .collect(),
            None,
        ),
        Message::Chunks(ids) => (
            ids.iter()
                .enumerate()
                .map(|(i, h)| {
                    let mut c = source.store.chunk_stored(&ChunkId(*h)).unwrap();
                    if lie == Lie::WrongChunk && i == 0 {
                        let last = c.stored.len() - 1;
                        c.stored[last] ^= 0x55;
                    }
                    Message::Chunk {
                        id: *h,
                        len: c.len,
                        stored: c.stored,
                    }
                    .encode()
                })
                .collect(),
            None,
        ),
        Message::Image(h) => (
            vec![
                Message::Missing {
                    what: What::Image,
                    id: *h,
                }
                .encode(),
            ],
            None,
        ),
        other => panic!("unexpected {other:?}"),
    }
}

fn pack(ledger: &Ledger, plan: utter_ledger::sync::PackPlan) -> (Vec<Vec<u8>>, Option<Vec<u8>>) {
    let mut bytes = Vec::new();
    ledger.write_pack(&plan.objects, &mut bytes).unwrap();
    let frame = Message::Pack {
        commits: plan.commits,
        objects: plan.objects.len() as u32,
        more: plan.more,
    };
    (vec![frame.encode()], Some(bytes))
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn fault(e: PassError) -> Fault {
    match e {
        PassError::Fault(f) => f,
        other => panic!("expected a fault, got {other}"),
    }
}

#[test]
fn a_clone_brings_blocks_values_and_refs_and_a_later_pass_only_what_is_new() {
    let rt = runtime();
    let a = Node::chain();
    let big = noise(300 << 10, 1);
    let tip = a.grow(3);
    a.block(tip, 4, Some(&big));
    a.grow(20);
    let side = a.block(a.ledger.genesis(), 1, None);
    a.ledger.create_branch("door", side).unwrap();
    let (addr, fp) = serve(&rt, &a);

    let b = Node::empty(&a);
    let passed = pass(&b, addr, Some(fp.clone()), true).unwrap();
    assert_eq!(b.main(), a.main());
    assert_eq!(b.ledger.branch("door").unwrap(), Some(side));
    assert_eq!(
        passed.summary.commits, 26,
        "24 on main, genesis and the door's"
    );
    assert!(
        passed.progress.chunks >= 2,
        "the large value came in chunks: {:?}",
        passed.progress
    );
    let main = b.ledger.block(b.main().unwrap()).unwrap();
    assert_eq!(
        b.ledger
            .read_value(&main, "dapps/notes/state/big")
            .unwrap()
            .unwrap(),
        big
    );
    let report = b.ledger.verify(None, false, |_, _| {}).unwrap();
    assert!(report.first_bad().is_none(), "{:?}", report.first_bad());
    assert!(
        b.ledger.fetched().unwrap().is_empty(),
        "fetched refs go once refs name the blocks"
    );
    // git agrees the repository is whole.
    b.fsck();

    // Three more blocks: only those come.
    a.grow(3);
    let passed = pass(&b, addr, Some(fp.clone()), false).unwrap();
    assert_eq!(passed.summary.commits, 3);
    assert_eq!(passed.progress.chunks, 0);
    assert_eq!(b.main(), a.main());
    // Nothing new: nothing comes.
    let passed = pass(&b, addr, Some(fp), false).unwrap();
    assert_eq!(
        (passed.summary.commits, passed.summary.updates.len()),
        (0, 0)
    );
}

#[test]
fn a_long_ledger_comes_in_batches_each_kept_before_the_next() {
    let rt = runtime();
    let a = Node::chain();
    let mut tip = a.main().unwrap();
    for _ in 0..40 {
        tip = a.block(tip, 60, None);
    }
    let (addr, fp) = serve(&rt, &a);
    let b = Node::empty(&a);
    let passed = pass(&b, addr, Some(fp), true).unwrap();
    assert_eq!(passed.summary.commits, 41, "with genesis");
    assert!(
        b.packs().len() >= 2 * 3,
        "three or more packs (and their indexes): {:?}",
        b.packs()
    );
    assert_eq!(b.main(), a.main());
}

#[test]
fn certificates_travel_with_their_blocks_and_refs_agree() {
    let rt = runtime();
    let a = Node::chain();
    let tip = a.grow(2);
    let block = a.ledger.block(tip).unwrap();
    let vote = SignedVote::sign(&a.key, CHAIN, block.id, block.height).unwrap();
    let cert = Certificate {
        chain: CHAIN.into(),
        block: block.id,
        height: block.height,
        votes: vec![vote],
    };
    a.ledger.write_certificate(&cert).unwrap();
    let (addr, fp) = serve(&rt, &a);
    let b = Node::empty(&a);
    pass(&b, addr, Some(fp), true).unwrap();
    assert_eq!(
        b.ledger.ref_id(NOTES_REF).unwrap(),
        a.ledger.ref_id(NOTES_REF).unwrap(),
        "the notes ref is the same commit"
    );
    let got = b.ledger.certificate(tip).unwrap().unwrap();
    assert!(b.ledger.check_certificate(&block, &got).unwrap().is_ok());
}

#[test]
fn a_chunk_whose_bytes_are_not_its_id_is_refused_and_nothing_is_stored() {
    let rt = runtime();
    let a = Node::chain();
    let tip = a.grow(1);
    a.block(tip, 1, Some(&noise(200 << 10, 2)));
    let addr = hostile(&rt, &a, Lie::WrongChunk);
    let b = Node::empty(&a);
    let err = pass(&b, addr, None, true).unwrap_err();
    assert!(err.peer_is_at_fault(), "{err}");
    assert!(err.to_string().contains("chunk"), "{err}");
    assert_eq!(b.main(), None, "no ref moved");
    assert_eq!(
        b.store.stats().chunks,
        0,
        "nothing of the answer was stored"
    );
    assert!(
        b.packs().is_empty(),
        "the packs it sent were dropped: {:?}",
        b.packs()
    );
}

/// A block git signs (or not) over `tree` with `message`.
fn git_commit(node: &Node, tree: &str, parent: BlockId, message: &str, sign: bool) -> BlockId {
    let repo = node.dir.path().join("ledger.git");
    let keyfile = node.dir.path().join("signing_key");
    node.key.save(&keyfile).unwrap();
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(&repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", &repo);
    if sign {
        cmd.args(["-c", "gpg.format=ssh", "-c"])
            .arg(format!("user.signingkey={}", keyfile.display()))
            .args(["commit-tree", "-S"]);
    } else {
        cmd.arg("commit-tree");
    }
    cmd.args([tree, "-p", &parent.to_string(), "-F", "-"])
        .env("GIT_AUTHOR_NAME", "x")
        .env("GIT_AUTHOR_EMAIL", "x@x")
        .env("GIT_COMMITTER_NAME", "x")
        .env("GIT_COMMITTER_EMAIL", "x@x")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn forged_blocks_move_nothing_and_the_peer_is_at_fault() {
    let rt = runtime();
    let a = Node::chain();
    let tip = a.grow(2);
    let b = Node::empty(&a);
    let (honest, fp) = serve(&rt, &a);
    pass(&b, honest, Some(fp), true).unwrap();
    let parent = a.ledger.block(tip).unwrap();
    let tree = parent.tree.to_string();
    let unsigned = git_commit(
        &a,
        &tree,
        tip,
        "block 3\n\nHeight: 3\nChain: space\n",
        false,
    );
    let bad_height = git_commit(&a, &tree, tip, "block 3\n\nHeight: 7\nChain: space\n", true);
    let stranger = a
        .ledger
        .write_block(
            &Draft {
                parents: vec![tip],
                changes: Default::default(),
                txs: vec![],
                results: vec![],
                text: "block 3".into(),
                time: T0 + 3,
                round: None,
            },
            &Keypair::generate("stranger").unwrap(),
        )
        .unwrap()
        .id;
    let packs_before = b.packs();
    for (forged, why) in [
        (unsigned, "not signed"),
        (bad_height, "height"),
        (stranger, "not a validator"),
    ] {
        let addr = hostile(&rt, &a, Lie::Main(forged));
        let before = b.main();
        let err = fault(pass(&b, addr, None, false).unwrap_err());
        assert!(matches!(&err, Fault::Invalid { .. }), "{err}");
        assert!(err.peer_is_at_fault());
        assert!(err.to_string().contains(why), "{why}: {err}");
        assert_eq!(b.main(), before, "main did not move");
        assert_eq!(
            b.packs(),
            packs_before,
            "the pack with the forged block was dropped"
        );
    }
}

#[test]
fn a_truncated_pack_is_refused_and_nothing_is_kept() {
    let rt = runtime();
    let a = Node::chain();
    a.grow(5);
    let addr = hostile(&rt, &a, Lie::TruncatedPack);
    let b = Node::empty(&a);
    let err = fault(pass(&b, addr, None, true).unwrap_err());
    assert!(matches!(err, Fault::Protocol(_)), "{err}");
    assert!(err.to_string().contains("pack"), "{err}");
    assert!(b.packs().is_empty(), "{:?}", b.packs());
    assert_eq!(b.main(), None);
}

#[test]
fn a_pack_object_that_inflates_past_the_limit_is_refused_before_it_is_allocated() {
    let rt = runtime();
    let a = Node::chain();
    a.grow(1);
    let addr = hostile(&rt, &a, Lie::Bomb);
    let b = Node::empty(&a);
    let err = fault(pass(&b, addr, None, true).unwrap_err());
    assert!(matches!(err, Fault::Protocol(_)), "{err}");
    assert!(err.to_string().contains("too large"), "{err}");
    assert!(b.packs().is_empty(), "{:?}", b.packs());
    assert_eq!(b.main(), None);
}

#[test]
fn an_oversized_frame_is_refused_from_its_length_alone() {
    let rt = runtime();
    let a = Node::chain();
    let addr = hostile(&rt, &a, Lie::HugeFrame);
    let b = Node::empty(&a);
    let err = pass(&b, addr, None, true).unwrap_err();
    assert!(
        matches!(&err, PassError::Net(NetError::Wire { .. })),
        "{err}"
    );
    assert!(err.peer_is_at_fault());
    assert!(err.to_string().contains("above the limit"), "{err}");
}

#[test]
fn a_peer_that_stalls_times_out_and_another_completes_the_sync() {
    let rt = runtime();
    let a = Node::chain();
    a.grow(4);
    let stalling = hostile(&rt, &a, Lie::Stall);
    let (honest, fp) = serve(&rt, &a);
    let b = Node::empty(&a);
    let started = std::time::Instant::now();
    let err = pass_with(&b, stalling, None, true, Some(Duration::from_secs(2))).unwrap_err();
    assert!(
        matches!(&err, PassError::Net(NetError::Timeout { .. })),
        "{err}"
    );
    assert!(err.peer_is_at_fault());
    assert!(started.elapsed() < Duration::from_secs(30));
    pass(&b, honest, Some(fp), true).unwrap();
    assert_eq!(b.main(), a.main());
}

#[test]
fn a_main_that_does_not_descend_from_ours_is_kept_as_a_branch() {
    let rt = runtime();
    let a = Node::chain();
    let base = a.grow(2);
    let (addr, fp) = serve(&rt, &a);
    let b = Node::empty(&a);
    pass(&b, addr, Some(fp), true).unwrap();
    // The same validator signs two children of one block: B has one.
    let ours = a.block(base, 1, None);
    pass(&b, addr, Some(a.key.public().fingerprint()), false).unwrap();
    assert_eq!(b.main(), Some(ours));
    let theirs = a.block(base, 2, None);
    let liar = hostile(&rt, &a, Lie::Main(theirs));
    let passed = pass(&b, liar, None, false).unwrap();
    assert_eq!(b.main(), Some(ours), "main is never forced");
    let kept = format!("main.from-{}", utter_net::fetch::peer_tag(&a.key.public()));
    assert_eq!(
        b.ledger.branch(&kept).unwrap(),
        Some(theirs),
        "{:?}",
        passed.summary.updates
    );
}

#[test]
fn a_key_the_gate_refuses_and_a_pin_that_does_not_match_fail_the_handshake() {
    let rt = runtime();
    let a = Node::chain();
    a.grow(1);
    let b = Node::empty(&a);
    let allowed = b.key.public();
    let closed: Gate = Arc::new(move |k| *k == allowed);
    let _guard = rt.enter();
    let endpoint = Endpoint::serve(
        "127.0.0.1:0".parse().unwrap(),
        Identity::new(&a.key).unwrap(),
        &[ALPN_SYNC, ALPN_CHUNKS],
        closed,
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    rt.spawn(utter_net::serve::serve(endpoint, a.source()));
    drop(_guard);
    // A stranger's key is refused in the handshake.
    let c = Node::empty(&a);
    let err = pass(&c, addr, None, true).unwrap_err();
    assert!(err.to_string().contains("handshake"), "{err}");
    assert_eq!(c.main(), None);
    // A pin that is not the server's key: refused by the client.
    let wrong = Keypair::generate("other").unwrap().public().fingerprint();
    let err = pass(&b, addr, Some(wrong), true).unwrap_err();
    assert!(err.to_string().contains("handshake"), "{err}");
    // The allowed key with the right pin gets through.
    pass(&b, addr, Some(a.key.public().fingerprint()), true).unwrap();
    assert_eq!(b.main(), a.main());
}

#[test]
fn a_pack_that_goes_on_for_2_gib_is_refused_at_the_limit() {
    let rt = runtime();
    let a = Node::chain();
    a.grow(1);
    let addr = hostile(&rt, &a, Lie::EndlessPack);
    let b = Node::empty(&a);
    let err = pass(&b, addr, None, true).unwrap_err();
    assert!(
        matches!(&err, PassError::Net(NetError::TooMuch { .. })),
        "{err}"
    );
    assert!(b.packs().is_empty());
}

#[test]
fn certificates_written_on_both_sides_are_merged_not_forced() {
    let rt = runtime();
    let a = Node::chain();
    let t1 = a.grow(1);
    let t2 = a.grow(1);
    let (addr, fp) = serve(&rt, &a);
    let b = Node::empty(&a);
    pass(&b, addr, Some(fp.clone()), true).unwrap();
    let certify = |node: &Node, id: BlockId| {
        let block = node.ledger.block(id).unwrap();
        let vote = SignedVote::sign(&a.key, CHAIN, block.id, block.height).unwrap();
        node.ledger
            .write_certificate(&Certificate {
                chain: CHAIN.into(),
                block: block.id,
                height: block.height,
                votes: vec![vote],
            })
            .unwrap();
    };
    // Each side certifies another block: their notes commits diverge.
    certify(&a, t1);
    certify(&b, t2);
    let ours = b.ledger.ref_id(NOTES_REF).unwrap();
    let passed = pass(&b, addr, Some(fp), false).unwrap();
    assert!(
        passed
            .summary
            .updates
            .iter()
            .any(|u| matches!(u, utter_net::sync::RefUpdate::MergeNotes { .. })),
        "{:?}",
        passed.summary.updates
    );
    assert!(b.ledger.certificate(t1).unwrap().is_some(), "theirs came");
    assert!(b.ledger.certificate(t2).unwrap().is_some(), "ours stayed");
    let now = b.ledger.ref_id(NOTES_REF).unwrap().unwrap();
    assert!(
        b.ledger.commit_descends(now, ours.unwrap()).unwrap(),
        "ours was not forced over"
    );
}
