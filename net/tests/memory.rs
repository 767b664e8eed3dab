//! Memory stays bounded whatever a peer sends: a pack stream of 2 GiB is
//! refused at the limit with the process's peak resident memory barely
//! moved (this binary holds only this test, so the peak is its own).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use utter_net::wire::Message;
use utter_net::{ALPN_CHUNKS, ALPN_SYNC, Endpoint, Identity, NetError, PassError};

/// Peak resident memory of this process, bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_2_gib_pack_stream_is_refused_with_bounded_memory() {
    let rt = runtime();
    let a = Node::chain();
    a.grow(1);
    let _guard = rt.enter();
    let endpoint = Endpoint::serve(
        "127.0.0.1:0".parse().unwrap(),
        Identity::new(&a.key).unwrap(),
        &[ALPN_SYNC, ALPN_CHUNKS],
        utter_net::tls::open_gate(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let source = Arc::new(a.source());
    // Honest heads; then a pack header and 2 GiB of bytes.
    rt.spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let source = source.clone();
            tokio::spawn(async move {
                let (conn, _) = incoming.connected().await.unwrap();
                while let Some(Ok((request, mut reply))) = conn.next_request().await {
                    let ledger = utter_ledger::Ledger::open(
                        &source.ledger_dir,
                        Arc::new(source.store.clone()),
                    )
                    .unwrap();
                    let frame = match request {
                        Message::Heads => Message::HeadsAre {
                            chain: ledger.chain().into(),
                            genesis: ledger.genesis(),
                            refs: ledger.shared_refs().unwrap(),
                        },
                        _ => Message::Pack {
                            commits: vec![ledger.genesis()],
                            objects: 3,
                            more: false,
                        },
                    };
                    drop(ledger);
                    let endless = matches!(frame, Message::Pack { .. });
                    tokio::spawn(async move {
                        reply.frame(&frame).await.unwrap();
                        if endless {
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
                        reply.finish();
                    });
                }
            });
        }
    });
    drop(_guard);
    // Warm up everything but the stream (TLS, runtimes, the stores).
    let b = Node::empty(&a);
    let before = peak_rss();
    let started = std::time::Instant::now();
    let err = pass_with(&b, addr, None, true, Some(Duration::from_secs(20))).unwrap_err();
    assert!(
        matches!(&err, PassError::Net(NetError::TooMuch { .. })),
        "{err}"
    );
    let grew = peak_rss().saturating_sub(before);
    eprintln!(
        "refused after {:.1} s; peak resident memory grew {} MiB",
        started.elapsed().as_secs_f64(),
        grew >> 20
    );
    assert!(grew < 160 << 20, "peak RSS grew {} MiB", grew >> 20);
    assert!(b.packs().is_empty());
}
