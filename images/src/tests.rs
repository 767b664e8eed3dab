//! Hostile layers and damaged images: each must fail with the entry named,
//! write nothing outside the target and leave nothing reachable.

use std::io::Write;
use std::path::{Path, PathBuf};

use utter_chunkstore::{OpenOptions, Store};

use crate::tar::{Header, Kind, Writer};
use crate::{
    BuildInput, BuildOptions, Digest, Images, ImportError, ImportOptions, Source, UnpackError,
    UnpackOptions,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Fixture {
    dir: tempfile::TempDir,
    images: Images,
}

impl Fixture {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let chunks = Store::open(
            dir.path().join("db"),
            &OpenOptions {
                create: true,
                ..OpenOptions::default()
            },
        )?;
        let images = Images::open(dir.path().join("images"), chunks)?;
        Ok(Self { dir, images })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn pins(&self) -> Result<usize> {
        Ok(self.images.chunks().pins()?.len())
    }
}

fn h<'a>(path: &'a str, kind: Kind) -> Header<'a> {
    Header {
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        ..Header::file(path.as_bytes())
    }
}

/// A tar of (header, data) entries.
fn tar(entries: &[(Header<'_>, &[u8])]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    for (header, data) in entries {
        let mut header = header.clone();
        header.size = data.len() as u64;
        w.append(&header, Some(&mut &data[..])).expect("in memory");
    }
    w.finish().expect("in memory")
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> (Header<'a>, &'a [u8]) {
    (h(path, Kind::File), data)
}

fn link<'a>(path: &'a str, kind: Kind, target: &'a str) -> (Header<'a>, &'a [u8]) {
    (
        Header {
            link: target.as_bytes(),
            ..h(path, kind)
        },
        b"",
    )
}

fn unpack(
    target: &Path,
    layers: &[Vec<u8>],
) -> std::result::Result<crate::UnpackReport, UnpackError> {
    let mut readers: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let mut dyns: Vec<&mut dyn std::io::Read> = readers
        .iter_mut()
        .map(|r| r as &mut dyn std::io::Read)
        .collect();
    crate::unpack::unpack_tars(target, &mut dyns, UnpackOptions::default())
}

/// The sandbox: `root/` is the target; `outside/` must stay empty.
fn sandbox() -> Result<(tempfile::TempDir, PathBuf, PathBuf)> {
    let t = tempfile::tempdir()?;
    let root = t.path().join("a/b/root");
    let outside = t.path().join("a/b");
    std::fs::create_dir_all(&root)?;
    Ok((t, root, outside))
}

fn outside_untouched(outside: &Path) -> Result {
    let names: Vec<_> = std::fs::read_dir(outside)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::result::Result<_, _>>()?;
    assert_eq!(
        names,
        vec!["root".to_string()],
        "something was written beside the rootfs"
    );
    assert!(std::fs::read_dir(outside.parent().expect("a"))?.count() == 1);
    Ok(())
}

fn expect_entry_error(
    result: std::result::Result<crate::UnpackReport, UnpackError>,
    entry: &str,
) -> String {
    let err = result.expect_err("a hostile layer must fail");
    let text = err.to_string();
    assert!(
        text.contains(&format!("`{entry}`")),
        "error does not name `{entry}`: {text}"
    );
    text
}

#[test]
fn dot_dot_entries_are_refused() -> Result {
    let (_t, root, outside) = sandbox()?;
    let layer = tar(&[file("ok", b"fine"), file("../escaped", b"pwned")]);
    let text = expect_entry_error(unpack(&root, &[layer]), "../escaped");
    assert!(text.contains(".."), "{text}");
    outside_untouched(&outside)?;
    let layer = tar(&[file("x/../../escaped", b"pwned")]);
    expect_entry_error(unpack(&root, &[layer]), "x/../../escaped");
    outside_untouched(&outside)
}

#[test]
fn absolute_entries_are_refused() -> Result {
    let (_t, root, outside) = sandbox()?;
    let target = outside.join("abs");
    let name = target.to_string_lossy().into_owned();
    let layer = tar(&[file(&name, b"pwned")]);
    let text = expect_entry_error(unpack(&root, &[layer]), &name);
    assert!(text.contains("absolute"), "{text}");
    assert!(!target.exists());
    outside_untouched(&outside)
}

#[test]
fn writes_through_a_symlink_that_leaves_the_rootfs_are_refused() -> Result {
    let (_t, root, outside) = sandbox()?;
    // In one layer, and with the link in a lower layer.
    let layer = tar(&[
        link("evil", Kind::Symlink, "../../.."),
        file("evil/pwned", b"pwned"),
    ]);
    let text = expect_entry_error(unpack(&root, &[layer]), "evil/pwned");
    assert!(text.contains("leaves the rootfs"), "{text}");
    outside_untouched(&outside)?;
    let (_t, root, outside) = sandbox()?;
    let lower = tar(&[
        (h("d", Kind::Dir), b""),
        link("d/up", Kind::Symlink, "../../x/..//.."),
    ]);
    let upper = tar(&[file("d/up/pwned", b"pwned")]);
    expect_entry_error(unpack(&root, &[lower, upper]), "d/up/pwned");
    outside_untouched(&outside)
}

#[test]
fn absolute_symlinks_resolve_inside_the_rootfs() -> Result {
    let (_t, root, outside) = sandbox()?;
    // `/etc` in an image means the image's /etc, as in the container.
    let layer = tar(&[
        (h("etc", Kind::Dir), b""),
        link("conf", Kind::Symlink, "/etc"),
        file("conf/written", b"inside"),
    ]);
    unpack(&root, &[layer])?;
    assert_eq!(std::fs::read(root.join("etc/written"))?, b"inside");
    outside_untouched(&outside)
}

#[test]
fn a_file_replaces_a_symlink_instead_of_writing_through_it() -> Result {
    let (t, root, outside) = sandbox()?;
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"original")?;
    let lower = tar(&[link("f", Kind::Symlink, &victim.to_string_lossy())]);
    let upper = tar(&[file("f", b"new")]);
    unpack(&root, &[lower, upper])?;
    assert_eq!(std::fs::read(&victim)?, b"original");
    assert_eq!(std::fs::read(root.join("f"))?, b"new");
    std::fs::remove_file(&victim)?;
    outside_untouched(&outside)
}

#[test]
fn hard_links_to_outside_paths_are_refused() -> Result {
    let (t, root, outside) = sandbox()?;
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"secret")?;
    let layer = tar(&[link("h", Kind::Hardlink, "../../../victim")]);
    expect_entry_error(unpack(&root, &[layer]), "h");
    let layer = tar(&[link("h2", Kind::Hardlink, &victim.to_string_lossy())]);
    expect_entry_error(unpack(&root, &[layer]), "h2");
    // Through a symlinked directory that leaves the rootfs.
    let layer = tar(&[
        link("up", Kind::Symlink, "../../.."),
        link("h3", Kind::Hardlink, "up/victim"),
    ]);
    expect_entry_error(unpack(&root, &[layer]), "h3");
    std::fs::remove_file(&victim)?;
    outside_untouched(&outside)
}

#[test]
fn device_nodes_are_skipped_with_a_warning() -> Result {
    let (_t, root, outside) = sandbox()?;
    let layer = tar(&[
        (h("sda", Kind::Block), b""),
        (h("null", Kind::Char), b""),
        file("ok", b"x"),
    ]);
    let report = unpack(&root, &[layer])?;
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("sda"));
    assert!(!root.join("sda").exists() && !root.join("null").exists());
    assert!(root.join("ok").exists());
    outside_untouched(&outside)
}

#[test]
fn a_header_claiming_more_than_the_stream_holds_is_named() -> Result {
    let (_t, root, outside) = sandbox()?;
    let mut layer = tar(&[file("big", &[7u8; 100_000])]);
    layer.truncate(512 + 4096);
    let err = unpack(&root, &[layer]).expect_err("truncated");
    assert!(err.to_string().contains("big"), "{err}");
    assert!(err.to_string().contains("ends"), "{err}");
    outside_untouched(&outside)
}

#[test]
fn whiteouts_cannot_reach_outside() -> Result {
    let (t, root, outside) = sandbox()?;
    let victim = t.path().join("a/victim");
    std::fs::write(&victim, b"keep")?;
    for (layer, entry) in [
        (tar(&[file("../.wh.victim", b"")]), "../.wh.victim"),
        (tar(&[file(".wh..", b"")]), ".wh.."),
        (
            tar(&[
                link("up", Kind::Symlink, "../.."),
                file("up/.wh.victim", b""),
            ]),
            "up/.wh.victim",
        ),
    ] {
        expect_entry_error(unpack(&root, &[layer]), entry);
        assert_eq!(std::fs::read(&victim)?, b"keep");
    }
    std::fs::remove_file(&victim)?;
    outside_untouched(&outside)
}

#[test]
fn whiteouts_and_opaque_directories_hide_lower_layers_only() -> Result {
    let (_t, root, _) = sandbox()?;
    let lower = tar(&[
        (h("d", Kind::Dir), b""),
        file("d/old", b"1"),
        file("d/keep", b"1"),
        (h("o", Kind::Dir), b""),
        file("o/lower", b"1"),
        file("gone", b"1"),
    ]);
    let upper = tar(&[
        file("o/upper", b"2"), // made before the marker: survives it
        file("o/.wh..wh..opq", b""),
        file("d/.wh.old", b""),
        file(".wh.gone", b""),
        file("new", b"2"),
        file(".wh.new", b""), // same layer: hides nothing
    ]);
    unpack(&root, &[lower, upper])?;
    assert!(!root.join("d/old").exists());
    assert!(root.join("d/keep").exists());
    assert!(!root.join("o/lower").exists());
    assert!(root.join("o/upper").exists());
    assert!(!root.join("gone").exists());
    assert!(root.join("new").exists());
    assert!(!root.join("o/.wh..wh..opq").exists());
    Ok(())
}

#[test]
fn hard_links_and_modes_are_applied() -> Result {
    let (_t, root, _) = sandbox()?;
    let layer = tar(&[
        (
            Header {
                mode: 0o555,
                ..h("ro", Kind::Dir)
            },
            b"",
        ),
        (
            Header {
                mode: 0o4755,
                ..h("ro/suid", Kind::File)
            },
            b"x",
        ),
        link("ro/again", Kind::Hardlink, "ro/suid"),
    ]);
    unpack(&root, &[layer])?;
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(root.join("ro/suid"))?;
    let b = std::fs::metadata(root.join("ro/again"))?;
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.mode() & 0o7777, 0o4755);
    assert_eq!(std::fs::metadata(root.join("ro"))?.mode() & 0o7777, 0o555);
    crate::unpack::remove_tree(&root)?;
    assert!(!root.exists());
    Ok(())
}

// ---- import -------------------------------------------------------------

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("in memory");
    e.finish().expect("in memory")
}

/// Writes an OCI layout of one image with these layers (blob bytes, and the
/// uncompressed tar each must decompress to).
fn layout(dir: &Path, layers: &[(Vec<u8>, Digest)]) -> Result {
    std::fs::create_dir_all(dir.join("blobs/sha256"))?;
    let put = |bytes: &[u8]| -> Result<Digest> {
        let d = Digest::of(bytes);
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), bytes)?;
        Ok(d)
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, d)| d.to_string()).collect::<Vec<_>>()},
    }))?;
    let config_digest = put(&config)?;
    let mut descs = Vec::new();
    for (blob, _) in layers {
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": put(blob)?.to_string(), "size": blob.len(),
        }));
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": crate::media::MANIFEST,
        "config": {"mediaType": crate::media::CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": descs,
    }))?;
    let m = put(&manifest)?;
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": crate::media::MANIFEST, "digest": m.to_string(), "size": manifest.len(),
             "annotations": {"org.opencontainers.image.ref.name": "t"}}]}))?,
    )?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

fn source(dir: &Path) -> Source {
    Source::OciDir {
        dir: dir.to_path_buf(),
        tag: None,
    }
}

#[test]
fn import_checks_every_digest_and_keeps_nothing_of_a_bad_image() -> Result {
    let f = Fixture::new()?;
    let layer = tar(&[file("a", &[1u8; 300_000])]);
    let blob = gzip(&layer);
    let good = f.path("good");
    layout(&good, &[(blob.clone(), Digest::of(&layer))])?;
    // Blobs whose bytes changed after the manifest named them: a plain tar
    // (caught by the blob digest) and a gzip one (caught by gzip's CRC first).
    let tamper = |dir: &Path, blob: &[u8]| -> Result {
        layout(dir, &[(blob.to_vec(), Digest::of(&layer))])?;
        let path = dir.join("blobs/sha256").join(Digest::of(blob).hex());
        let mut bytes = std::fs::read(&path)?;
        let at = bytes.len() - 2000;
        bytes[at] ^= 0xff;
        std::fs::write(&path, bytes)?;
        Ok(())
    };
    let tampered = f.path("tampered");
    tamper(&tampered, &layer)?;
    let corrupt = f.path("corrupt");
    tamper(&corrupt, &blob)?;
    // A config whose diffID does not match the layer.
    let lying = f.path("lying");
    layout(&lying, &[(blob, Digest::of(b"something else"))])?;

    let pins = f.pins()?;
    for (dir, expect) in [
        (&tampered, "should have digest"),
        (&corrupt, "layer 1 of 1"),
        (&lying, "uncompressed"),
    ] {
        let err = f
            .images
            .import(&source(dir), &ImportOptions::default(), &mut |_| {})
            .expect_err("a damaged image must be refused");
        assert!(
            matches!(
                err,
                ImportError::DigestMismatch { .. } | ImportError::Invalid { .. }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(expect), "{err}");
        assert_eq!(f.pins()?, pins, "a refused import left a pin");
        assert!(f.images.list()?.is_empty());
    }
    // Damaged documents: the config, then the manifest.
    for (i, what) in ["config", "manifest"].iter().enumerate() {
        let dir = f.path(&format!("doc{i}"));
        layout(&dir, &[(gzip(&layer), Digest::of(&layer))])?;
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
        let manifest_digest: Digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap_or_default()
            .parse()?;
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
            dir.join("blobs/sha256").join(manifest_digest.hex()),
        )?)?;
        let target: Digest = if *what == "config" {
            manifest["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .parse()?
        } else {
            manifest_digest
        };
        let path = dir.join("blobs/sha256").join(target.hex());
        let mut bytes = std::fs::read(&path)?;
        bytes[5] = b' ';
        std::fs::write(&path, bytes)?;
        let err = f
            .images
            .import(&source(&dir), &ImportOptions::default(), &mut |_| {})
            .expect_err("a damaged document must be refused");
        assert!(
            err.to_string()
                .contains(&format!("{what} should have digest")),
            "{err}"
        );
        assert_eq!(f.pins()?, pins);
    }
    let gc = f.images.chunks().gc(&[])?;
    assert!(
        gc.chunks > 0,
        "the refused layer's chunks must be collectable"
    );
    let imported = f
        .images
        .import(&source(&good), &ImportOptions::default(), &mut |_| {})?;
    assert_eq!(imported.image.tags, vec!["t".to_string()]);
    assert_eq!(f.pins()?, pins + 1);
    Ok(())
}

#[test]
fn decompression_bombs_are_refused_with_bounded_memory() -> Result {
    let f = Fixture::new()?;
    // 400 MiB of zeros as one file in a tar, gzip'd to well under 1 MiB.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut w = Writer::new(&mut e);
    let size = 400u64 << 20;
    w.append(
        &Header {
            size,
            ..h("zeros", Kind::File)
        },
        Some(&mut std::io::repeat(0).take_bytes(size)),
    )?;
    w.finish()?;
    let blob = e.finish()?;
    assert!(blob.len() < 1 << 20);
    let dir = f.path("bomb");
    layout(&dir, &[(blob, Digest::of(b"unknown"))])?;
    let pins = f.pins()?;
    let err = f
        .images
        .import(&source(&dir), &ImportOptions::default(), &mut |_| {})
        .expect_err("a bomb must be refused");
    assert!(err.to_string().contains("decompression bomb"), "{err}");
    assert!(err.to_string().contains("layer 1"), "{err}");
    let err = f
        .images
        .import(
            &source(&dir),
            &ImportOptions {
                max_layer_size: 64 << 20,
                ..ImportOptions::default()
            },
            &mut |_| {},
        )
        .expect_err("over the size limit");
    assert!(err.to_string().contains("max-layer-size"), "{err}");
    assert_eq!(f.pins()?, pins);
    Ok(())
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        std::io::Read::take(self, n)
    }
}
impl<R: std::io::Read> TakeBytes for R {}

#[test]
fn builds_are_reproducible_and_round_trip() -> Result {
    let f = Fixture::new()?;
    let src = f.path("src");
    std::fs::create_dir_all(src.join("bin"))?;
    std::fs::write(src.join("bin/run"), b"#!/bin/sh\necho hi\n")?;
    std::os::unix::fs::symlink("run", src.join("bin/alias"))?;
    std::fs::hard_link(src.join("bin/run"), src.join("bin/again"))?;
    let options = BuildOptions {
        entrypoint: vec!["/bin/run".into()],
        tags: vec!["demo".into()],
        ..BuildOptions::default()
    };
    let a = f
        .images
        .build(&BuildInput::Dir(src.clone()), &options, &mut |_| {})?;
    // Touch times and rebuild: same digest.
    std::fs::File::options()
        .write(true)
        .open(src.join("bin/run"))?
        .set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))?;
    let b = f
        .images
        .build(&BuildInput::Dir(src.clone()), &options, &mut |_| {})?;
    assert_eq!(a.image.id, b.image.id);
    let root = f.path("root");
    f.images
        .unpack(&b.image, &root, UnpackOptions::default(), &mut |_, _| {})?;
    assert_eq!(
        std::fs::read(root.join("bin/again"))?,
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/alias"))?,
        PathBuf::from("run")
    );
    // Export, re-import: the same id.
    let out = f.path("out");
    f.images.export(&b.image, &out, Some("x"), &mut |_| {})?;
    let again = f.images.import(
        &Source::OciDir {
            dir: out,
            tag: Some("x".into()),
        },
        &ImportOptions::default(),
        &mut |_| {},
    )?;
    assert_eq!(again.image.id, a.image.id);
    assert_eq!(again.new_layers, 0);
    // The cache is made once, whole.
    let cached = f.images.rootfs(&a.image)?;
    assert!(cached.join("bin/run").is_file());
    assert_eq!(f.images.rootfs(&a.image)?, cached);
    let removed = f.images.remove(&a.image.id.to_string())?;
    assert_eq!(removed.layers_released, 1);
    assert!(!cached.exists());
    Ok(())
}
