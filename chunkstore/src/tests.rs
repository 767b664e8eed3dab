//! Store behaviour against a real RocksDB in a temporary directory.

use std::io::{self, Read};

use utter_testkit::noise;

use crate::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(
        dir.path().join("db"),
        &OpenOptions {
            create: true,
            ..Default::default()
        },
    )
    .unwrap();
    (dir, s)
}

fn read_all(s: &Store, id: &ManifestId) -> Result<Vec<u8>, io::Error> {
    let mut out = Vec::new();
    s.get(id)?.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn round_trips_edge_sizes() {
    let (_d, s) = store();
    let max = s.chunking().max as usize;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one byte", vec![42]),
        ("exactly four maximal chunks", vec![0; 4 * max]),
        ("one past a boundary", vec![0; max + 1]),
        ("noise", noise(9 << 20, 1)),
        (
            "text",
            (0..200_000)
                .flat_map(|i: u32| format!("line {i}\n").into_bytes())
                .collect(),
        ),
    ];
    for (name, data) in cases {
        let put = s.put(&data[..]).unwrap();
        assert_eq!(put.manifest.size(), data.len() as u64, "{name}");
        assert_eq!(read_all(&s, &put.id).unwrap(), data, "{name}");
        let mut copied = Vec::new();
        s.get(&put.id).unwrap().copy_to(&mut copied).unwrap();
        assert_eq!(copied, data, "{name}");
    }
    let zeros = s.put(&vec![0u8; 4 * max][..]).unwrap();
    assert_eq!(zeros.manifest.entries().len(), 4);
    assert!(
        zeros
            .manifest
            .entries()
            .iter()
            .all(|e| e.len as usize == max)
    );
    assert!(s.verify(|_, _| {}).unwrap().is_ok());
}

#[test]
fn second_put_of_same_data_adds_nothing() {
    let (_d, s) = store();
    let data = noise(3 << 20, 2);
    let first = s.put(&data[..]).unwrap();
    assert!(first.new_chunks > 0);
    assert!(
        first.new_bytes >= data.len() as u64,
        "noise does not compress"
    );
    let before = s.stats();
    let again = s.put(&data[..]).unwrap();
    assert_eq!(
        (again.id, again.new_chunks, again.new_bytes),
        (first.id, 0, 0)
    );
    assert_eq!(s.stats(), before);
    assert_eq!(s.pins().unwrap(), vec![(first.id, 2)]);
}

#[test]
fn an_insert_in_the_middle_stores_only_nearby_chunks() {
    let (_d, s) = store();
    let v1 = noise(16 << 20, 3);
    let mut v2 = v1.clone();
    v2.splice(8 << 20..8 << 20, b"a few new bytes".iter().copied());
    let a = s.put(&v1[..]).unwrap();
    let b = s.put(&v2[..]).unwrap();
    assert!(b.new_chunks <= 3, "{} new chunks", b.new_chunks);
    assert!(b.new_bytes < 1 << 20, "{} new bytes", b.new_bytes);
    assert_eq!(read_all(&s, &a.id).unwrap(), v1);
    assert_eq!(read_all(&s, &b.id).unwrap(), v2);
}

#[test]
fn compressible_chunks_are_stored_compressed() {
    let (_d, s) = store();
    let text: Vec<u8> = (0..300_000u32)
        .flat_map(|i| format!("{i:08}\n").into_bytes())
        .collect();
    let put = s.put(&text[..]).unwrap();
    assert!(
        put.new_bytes < text.len() as u64 / 2,
        "{} of {}",
        put.new_bytes,
        text.len()
    );
    let stats = s.stats();
    assert_eq!(stats.logical_bytes, text.len() as u64);
    assert_eq!(stats.chunk_bytes, text.len() as u64);
    assert!(stats.stored_bytes < stats.chunk_bytes / 2);
}

#[test]
fn a_damaged_chunk_is_an_error_naming_it() {
    let (_d, s) = store();
    let data = noise(2 << 20, 4);
    let put = s.put(&data[..]).unwrap();
    let victim = put.manifest.entries()[3];
    let mut bad = s.chunk(&victim.id).unwrap();
    bad[100] ^= 1;
    s.overwrite_chunk_for_test(&victim.id, &bad);

    let err = read_all(&s, &put.id).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&victim.id.to_string()), "{text}");
    assert!(matches!(s.chunk(&victim.id), Err(Error::CorruptChunk { id, .. }) if id == victim.id));

    let report = s.verify(|_, _| {}).unwrap();
    assert_eq!(report.bad_chunks.len(), 1);
    assert_eq!(report.bad_chunks[0].0, victim.id);
    assert_eq!(report.bad_manifests.len(), 1);
    assert_eq!(report.bad_manifests[0].0, put.id);
    assert!(report.bad_manifests[0].1.contains(&victim.id.to_string()));

    // A compressed chunk that no longer decompresses is reported too.
    let text: Vec<u8> = (0..100_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let put = s.put(&text[..]).unwrap();
    let victim = put.manifest.entries()[0];
    s.overwrite_chunk_for_test(&victim.id, b"not zstd");
    assert!(matches!(s.chunk(&victim.id), Err(Error::CorruptChunk { id, .. }) if id == victim.id));
}

#[test]
fn put_chunk_checks_the_hash() {
    let (_d, s) = store();
    let bytes = noise(70_000, 5);
    let id = ChunkId::of(&bytes);
    let wrong = ChunkId::of(b"something else");
    assert!(
        matches!(s.put_chunk(wrong, &bytes), Err(Error::HashMismatch { claimed, actual }) if claimed == wrong && actual == id)
    );
    assert!(matches!(s.put_chunk(id, &[]), Err(Error::ChunkSize { .. })));
    assert_eq!(s.missing(&[id, wrong]).unwrap(), vec![id, wrong]);
    assert!(s.put_chunk(id, &bytes).unwrap());
    assert!(!s.put_chunk(id, &bytes).unwrap());
    assert!(s.has(&id).unwrap());
    assert_eq!(s.missing(&[id, wrong]).unwrap(), vec![wrong]);
    assert_eq!(s.chunk(&id).unwrap(), bytes);

    // The manifest of a blob a peer is sending can arrive before its chunks.
    let m = Manifest::new(vec![
        Entry { id, len: 70_000 },
        Entry { id: wrong, len: 14 },
    ]);
    let mid = s.put_manifest(&m.encode()).unwrap();
    assert_eq!(mid, m.id());
    assert!(s.has_manifest(&mid).unwrap());
    assert!(matches!(
        s.put_manifest(b"garbage"),
        Err(Error::BadManifest(_))
    ));
    let report = s.verify(|_, _| {}).unwrap();
    assert_eq!(
        report.bad_manifests.len(),
        1,
        "an incomplete manifest is reported"
    );
    s.put_chunk(wrong, b"something else").unwrap();
    assert!(s.verify(|_, _| {}).unwrap().is_ok());
}

#[test]
fn gc_keeps_pinned_and_rooted_blobs_only() {
    let (_d, s) = store();
    let shared = noise(2 << 20, 6);
    let mut a = shared.clone();
    a.extend(noise(2 << 20, 7));
    let mut b = shared.clone();
    b.extend(noise(2 << 20, 8));
    let c = noise(1 << 20, 9);
    let pa = s.put(&a[..]).unwrap();
    let pb = s.put(&b[..]).unwrap();
    let pc = s
        .put_observed(&c[..], PutOptions { pin: false }, |_| {})
        .unwrap();
    assert_eq!(s.gc(&[pc.id]).unwrap(), GcReport::default());

    assert_eq!(s.unpin(&pb.id).unwrap(), 0);
    assert!(matches!(s.unpin(&pb.id), Err(Error::NotPinned(_))));
    let report = s.gc(&[]).unwrap();
    assert_eq!(report.manifests, 2, "b and c");
    assert!(report.chunks > 0);
    assert!(matches!(s.get(&pb.id), Err(Error::MissingManifest(_))));
    assert_eq!(read_all(&s, &pa.id).unwrap(), a);
    assert!(s.verify(|_, _| {}).unwrap().is_ok());
    let stats = s.stats();
    assert_eq!(stats.manifests, 1);
    assert_eq!(stats.logical_bytes, a.len() as u64);
    assert_eq!(
        stats.chunk_bytes,
        a.len() as u64,
        "noise: every chunk unique"
    );

    // Pins may name manifests not stored yet; they protect them once stored.
    let d = noise(1 << 20, 10);
    let future = s
        .put_observed(&d[..], PutOptions { pin: false }, |_| {})
        .unwrap();
    s.gc(&[pa.id]).unwrap();
    assert!(!s.has_manifest(&future.id).unwrap());
    s.pin(&future.id).unwrap();
    s.put_observed(&d[..], PutOptions { pin: false }, |_| {})
        .unwrap();
    s.gc(&[]).unwrap();
    assert_eq!(read_all(&s, &future.id).unwrap(), d);
}

#[test]
fn counters_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let open = |create| {
        Store::open(
            &path,
            &OpenOptions {
                create,
                ..Default::default()
            },
        )
    };
    let data = noise(3 << 20, 11);
    let stats = {
        let s = open(true).unwrap();
        s.put(&data[..]).unwrap();
        s.stats()
    };
    let s = open(false).unwrap();
    assert_eq!(s.stats(), stats);
    assert_eq!(stats.manifests, 1);
}

#[test]
fn chunking_is_fixed_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    assert!(matches!(
        Store::open(&path, &OpenOptions::default()),
        Err(OpenError::NotFound { .. })
    ));
    let small: Chunking = "2K/8K/32K".parse().unwrap();
    let with = |chunking, create| {
        Store::open(
            &path,
            &OpenOptions {
                create,
                chunking,
                ..Default::default()
            },
        )
    };
    let s = with(Some(small), true).unwrap();
    let put = s.put(&noise(1 << 20, 12)[..]).unwrap();
    assert!(put.manifest.entries().len() > 60, "8K average");
    drop(s);
    let err = with(Some(Chunking::default()), false)
        .err()
        .expect("must refuse");
    let text = err.to_string();
    assert!(
        text.contains("2K/8K/32K") && text.contains("16K/64K/256K"),
        "{text}"
    );
    assert_eq!(with(None, false).unwrap().chunking(), small);
    assert_eq!(with(Some(small), false).unwrap().chunking(), small);
}

#[test]
fn a_second_open_of_the_same_store_is_refused_clearly() {
    let (d, s) = store();
    let err = Store::open(d.path().join("db"), &OpenOptions::default())
        .err()
        .expect("locked");
    assert!(matches!(err, OpenError::Locked { .. }), "{err}");
    drop(s);
}

/// Fails after yielding some bytes, like a file on a dying disk.
struct Failing(usize);
impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0 == 0 {
            return Err(io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.0);
        buf[..n].fill(7);
        self.0 -= n;
        Ok(n)
    }
}

#[test]
fn a_failing_input_stores_no_manifest() {
    let (_d, s) = store();
    let err = s.put(Failing(10 << 20)).unwrap_err();
    assert!(
        matches!(err, Error::Input { offset, .. } if offset == 10 << 20),
        "{err}"
    );
    assert_eq!(s.stats().manifests, 0);
    assert!(s.pins().unwrap().is_empty());
    // The orphaned chunks are garbage.
    s.gc(&[]).unwrap();
    assert_eq!(s.stats().chunks, 0);
    assert_eq!(s.stats().stored_bytes, 0);
}

#[test]
fn concurrent_puts_of_overlapping_data_count_each_chunk_once() {
    let (_d, s) = store();
    let data = noise(8 << 20, 13);
    let puts: Vec<Put> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| sc.spawn(|| s.put(&data[..]).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total_new: u64 = puts.iter().map(|p| p.new_chunks).sum();
    assert_eq!(total_new, puts[0].manifest.entries().len() as u64);
    assert_eq!(s.stats().chunks, total_new);
    assert!(s.verify(|_, _| {}).unwrap().is_ok());
}

#[test]
fn counters_match_a_recount_after_every_kind_of_write() {
    let (_d, s) = store();
    let check = |what: &str| assert_eq!(s.stats(), s.recount_for_test(), "after {what}");
    let big = noise(6 << 20, 20);
    let text: Vec<u8> = (0..50_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let a = s.put(&big[..]).unwrap();
    check("a large put");
    s.put(&text[..]).unwrap();
    check("a small compressible put");
    s.put(&big[..]).unwrap();
    check("a repeated put");
    let chunk = noise(40_000, 21);
    s.put_chunk(ChunkId::of(&chunk), &chunk).unwrap();
    check("put_chunk");
    s.put_manifest(
        &Manifest::new(vec![Entry {
            id: ChunkId::of(&chunk),
            len: 40_000,
        }])
        .encode(),
    )
    .unwrap();
    check("put_manifest");
    s.unpin(&a.id).unwrap();
    s.unpin(&a.id).unwrap();
    s.gc(&[]).unwrap();
    check("gc");
}

#[test]
fn records_survive_reopening_and_a_read_only_open_sits_beside_the_writer() {
    let (dir, s) = store();
    s.write_records(
        &[(b"pool/1", b"a"), (b"pool/2", b"b"), (b"other/1", b"x")],
        &[],
    )
    .unwrap();
    s.write_records(&[(b"pool/3", b"c")], &[b"pool/1"]).unwrap();
    let id = s.put(&b"hello"[..]).unwrap().id;
    let reader = Store::open(
        dir.path().join("db"),
        &OpenOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .expect("a reader opens while the writer has the store");
    assert_eq!(read_all(&reader, &id).unwrap(), b"hello");
    assert!(reader.put(&b"nope"[..]).is_err(), "a reader cannot write");
    drop(reader);
    drop(s);
    let s = Store::open(dir.path().join("db"), &OpenOptions::default()).unwrap();
    assert_eq!(
        s.records(b"pool/").unwrap(),
        vec![
            (b"pool/2".to_vec(), b"b".to_vec()),
            (b"pool/3".to_vec(), b"c".to_vec())
        ]
    );
    assert_eq!(s.records(b"other/").unwrap().len(), 1);
    assert!(s.records(b"none/").unwrap().is_empty());
    let missing = Store::open(
        dir.path().join("nothing"),
        &OpenOptions {
            read_only: true,
            create: true,
            ..Default::default()
        },
    );
    assert!(missing.is_err(), "a reader never creates a store");
}
