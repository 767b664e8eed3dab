//! Proposals pushed whole, between real ledgers and stores: an honest push
//! leaves the receiver with a block that checks like a pulled one, and
//! each way a push can lie is refused with the sender at fault and
//! nothing of it stored.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use utter_formats::BlockId;
use utter_ledger::BlockChecker;
use utter_net::push::{proposal, receive};
use utter_net::wire::{Decoder, MAX_FRAME, Message, Proposal};

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

/// A chain with a few blocks, and a second node that cloned it.
struct Two {
    a: Node,
    b: Node,
}

fn two() -> Two {
    let rt = runtime();
    let a = Node::chain();
    let tip = a.grow(2);
    a.block(tip, 3, Some(&noise(150 << 10, 7)));
    let (addr, fp) = serve(&rt, &a);
    let b = Node::empty(&a);
    pass(&b, addr, Some(fp), true).unwrap();
    assert_eq!(b.main(), a.main());
    Two { a, b }
}

/// A new block on `a`'s main with transactions and a value large enough
/// for the chunk store, and its push as it crosses the wire.
fn pushed(a: &Node) -> (BlockId, Proposal) {
    let main = a.main().unwrap();
    let block = a.block(main, 40, Some(&noise(300 << 10, 11)));
    let p = proposal(&a.ledger, &a.store, block)
        .unwrap()
        .expect("a block of this size is pushed");
    let mut decoder = Decoder::new(MAX_FRAME);
    decoder.feed(&Message::Proposal(Box::new(p)).encode());
    match decoder.frame().unwrap() {
        Some(Message::Proposal(p)) => (block, *p),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_pushed_proposal_arrives_whole_and_checks_like_a_pulled_one() {
    let Two { a, b } = two();
    let (block, p) = pushed(&a);
    assert!(!p.chunks.is_empty(), "the large value's chunks are in it");
    assert_eq!(
        p.manifests.len(),
        1,
        "one new value: {:?}",
        p.manifests.len()
    );
    let chunks_before = b.store.stats().chunks;

    assert_eq!(
        receive(&b.ledger, &b.store, &b.images, &p).unwrap(),
        [block]
    );
    let checked = b
        .ledger
        .check_block(block, &mut BlockChecker::default())
        .unwrap();
    assert!(checked.is_ok(), "{checked:?}");
    let got = b.ledger.block(block).unwrap();
    assert_eq!(
        b.ledger
            .read_value(&got, "dapps/notes/state/big")
            .unwrap()
            .unwrap(),
        noise(300 << 10, 11)
    );
    assert_eq!(
        b.store.stats().chunks,
        chunks_before + p.chunks.len() as u64,
        "every pushed chunk stored once"
    );
    b.fsck();
    // Pushed again: nothing to do.
    assert_eq!(
        receive(&b.ledger, &b.store, &b.images, &p).unwrap(),
        Vec::<BlockId>::new()
    );
}

/// `lie` applied to an honest push, taken in by a node that has the
/// block's parent: refused, the sender at fault as `at_fault` says, and
/// nothing of it kept.
fn refused(lie: impl FnOnce(&mut Proposal, &Node), at_fault: bool, says: &str) {
    let Two { a, b } = two();
    let (_, mut p) = pushed(&a);
    lie(&mut p, &a);
    let packs = b.packs();
    let chunks = b.store.stats().chunks;
    let err = receive(&b.ledger, &b.store, &b.images, &p).unwrap_err();
    assert_eq!(err.peer_is_at_fault(), at_fault, "{says}: {err}");
    assert_eq!(err.untrustworthy(), at_fault, "{says}: {err}");
    assert!(err.to_string().contains(says), "{says}: {err}");
    assert_eq!(b.store.stats().chunks, chunks, "{says}: no chunk stored");
    if at_fault {
        assert_eq!(b.packs(), packs, "{says}: the pack was dropped");
    }
}

#[test]
fn a_pack_that_does_not_read_is_refused() {
    refused(
        |p, _| {
            let mid = p.pack.len() / 2;
            p.pack[mid] ^= 0xff;
        },
        true,
        "the pack does not read",
    );
}

#[test]
fn a_pack_whose_object_count_is_not_the_pushed_one_is_refused() {
    refused(|p, _| p.objects += 1, true, "the pack holds");
}

#[test]
fn a_push_whose_pack_lacks_its_block_is_refused() {
    refused(
        |p, _| p.block = BlockId::from_sha1([9; 20]),
        true,
        "the pack lacks block",
    );
}

#[test]
fn a_chunk_whose_bytes_are_not_its_id_is_refused() {
    refused(
        |p, _| {
            let c = p.chunks.last_mut().unwrap();
            let mid = c.stored.len() / 2;
            c.stored[mid] ^= 0xff;
        },
        true,
        "a chunk that is not its id",
    );
}

#[test]
fn a_chunk_no_pushed_manifest_names_is_refused() {
    refused(
        |p, _| p.chunks[0].id = [5; 32],
        true,
        "is not one its manifests name",
    );
}

#[test]
fn a_manifest_with_other_bytes_than_its_id_is_refused() {
    refused(
        |p, _| p.manifests[0].1.push(0),
        true,
        "arrived with other bytes",
    );
}

#[test]
fn a_value_the_block_does_not_name_is_refused() {
    refused(
        |p, a| {
            let put = a.store.put(&noise(200 << 10, 99)[..]).unwrap();
            let m = a.store.manifest(&put.id).unwrap();
            p.manifests.push((put.id.0, m.encode()));
        },
        true,
        "is not one the block names",
    );
}

#[test]
fn a_push_without_a_value_it_names_is_pulled_instead() {
    refused(
        |p, _| {
            p.manifests.clear();
            p.chunks.clear();
        },
        false,
        "was not pushed",
    );
}

#[test]
fn a_push_missing_one_chunk_is_pulled_instead_and_stores_none() {
    refused(
        |p, _| {
            p.chunks.pop();
        },
        false,
        "was not pushed",
    );
}

#[test]
fn a_push_whose_parent_is_not_here_is_pulled_instead() {
    let Two { a, b } = two();
    let main = a.main().unwrap();
    a.block(main, 2, None);
    let (_, p) = pushed(&a);
    let err = receive(&b.ledger, &b.store, &b.images, &p).unwrap_err();
    assert!(!err.peer_is_at_fault(), "{err}");
    assert!(err.to_string().contains("is not here"), "{err}");
}
