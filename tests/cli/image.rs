//! `utter image …` with umoci and skopeo as oracles: images they make are
//! imported from every transport, unpack to the tree `umoci unpack` makes,
//! and what utter exports passes `skopeo inspect` and `umoci unpack`.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use serde_json::Value;

use super::*;

fn tool(program: &str, args: &[&str], cwd: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed (./x test installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0
}

fn busybox() -> PathBuf {
    ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox must be installed (./x test installs busybox-static)")
}

/// A small rootfs with what layers must carry: symlinks, a hard link,
/// owners, setuid, sticky, a fifo, a private directory and a long name.
fn rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(busybox(), dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "cat", "echo", "true"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::create_dir_all(
        dir.join("etc/deep")
            .join("n".repeat(90))
            .join("m".repeat(60)),
    )
    .unwrap();
    file(
        &dir.join("etc/deep")
            .join("n".repeat(90))
            .join("m".repeat(60)),
        "long-named-file",
        b"far down",
    );
    file(&dir.join("etc"), "motd", b"hello\n");
    std::fs::hard_link(dir.join("etc/motd"), dir.join("etc/motd.again")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::set_permissions(dir.join("root"), std::fs::Permissions::from_mode(0o700)).unwrap();
    file(&dir.join("bin"), "su", b"not really");
    std::fs::set_permissions(dir.join("bin/su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::create_dir_all(dir.join("var/old")).unwrap();
    file(&dir.join("var/old"), "a", b"a");
    file(&dir.join("var/old"), "b", b"b");
    tool("mkfifo", &[dir.join("tmp/fifo").to_str().unwrap()], dir);
    if is_root() {
        std::os::unix::fs::chown(dir.join("etc/motd"), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::lchown(dir.join("bin/sh"), Some(7), Some(8)).unwrap();
    }
}

/// Every entry under `root`: type, mode, owner, size, content digest,
/// link target and link count.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = m.file_type();
            let detail = if ft.is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                format!(
                    "file {} {} nlink={}",
                    bytes.len(),
                    blake3::hash(&bytes).to_hex(),
                    m.nlink()
                )
            } else if ft.is_dir() {
                "dir".to_string()
            } else {
                "other".to_string()
            };
            let owner = if ft.is_symlink() {
                format!("{}:{}", m.uid(), m.gid())
            } else {
                format!("{}:{} {:o}", m.uid(), m.gid(), m.mode() & 0o7777)
            };
            out.insert(rel, format!("{detail} {owner}"));
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same_tree(ours: &Path, theirs: &Path) {
    let (a, b) = (tree(ours), tree(theirs));
    for (k, v) in &b {
        assert_eq!(a.get(k), Some(v), "`{k}` differs (utter vs umoci)");
    }
    assert_eq!(
        a.len(),
        b.len(),
        "utter unpacked extra entries: {:?}",
        a.keys().filter(|k| !b.contains_key(*k)).collect::<Vec<_>>()
    );
}

fn umoci_unpack(image: &str, bundle: &Path, cwd: &Path) -> PathBuf {
    let mut args = vec!["unpack"];
    if !is_root() {
        args.push("--rootless");
    }
    args.extend(["--image", image, bundle.to_str().unwrap()]);
    tool("umoci", &args, cwd);
    bundle.join("rootfs")
}

/// An umoci-made image `L:v2` of two gzip layers: the rootfs, then a layer
/// that deletes a file and a directory, changes a file and adds one.
fn umoci_image(work: &Path) {
    let root = work.join("src");
    rootfs(&root);
    tool("umoci", &["init", "--layout", "L"], work);
    tool("umoci", &["new", "--image", "L:v1"], work);
    umoci_unpack("L:v1", &work.join("B"), work);
    tool(
        "cp",
        &["-a", &format!("{}/.", root.display()), "B/rootfs/"],
        work,
    );
    tool(
        "umoci",
        &["repack", "--refresh-bundle", "--image", "L:v1", "B"],
        work,
    );
    std::fs::remove_file(work.join("B/rootfs/etc/motd.again")).unwrap();
    std::fs::remove_dir_all(work.join("B/rootfs/var/old")).unwrap();
    file(&work.join("B/rootfs/etc"), "motd", b"changed\n");
    file(&work.join("B/rootfs/etc"), "new", b"new\n");
    tool("umoci", &["repack", "--image", "L:v2", "B"], work);
    tool("rm", &["-rf", "B"], work);
}

fn json(out: &str) -> Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn images_from_every_transport_unpack_like_umoci() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let data = w.join("data");
    umoci_image(w);
    tool(
        "skopeo",
        &["copy", "-q", "oci:L:v2", "docker-archive:d.tar:busy:v2"],
        w,
    );
    tool(
        "skopeo",
        &["copy", "-q", "oci:L:v2", "oci-archive:o.tar:v2"],
        w,
    );
    tool(
        "skopeo",
        &[
            "copy",
            "-q",
            "--dest-compress-format",
            "zstd",
            "--dest-compress",
            "oci:L:v2",
            "oci:Z:v2",
        ],
        w,
    );
    let mut ids = Vec::new();
    for (i, source) in [
        "oci:L:v2",
        "oci-archive:o.tar:v2",
        "docker-archive:d.tar",
        "oci:Z:v2",
    ]
    .iter()
    .enumerate()
    {
        let src = source.replacen(':', &format!(":{}/", w.display()), 1);
        let v = json(&ok(utter(&data).args(["image", "import", &src, "--json"])));
        assert_eq!(v["layers"].as_array().unwrap().len(), 2, "{v}");
        // The first import stores both layers; the same image again, from
        // any transport, stores nothing.
        assert_eq!(v["new_layers"], if i == 0 { 2 } else { 0 }, "{source}: {v}");
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one image, one id: {ids:?}"
    );
    // The source's own tags are kept and name the image.
    let ls = json(&ok(utter(&data).args(["image", "ls", "--json"])));
    let tags = ls[0]["tags"].as_array().unwrap();
    assert!(
        tags.iter().any(|t| t == "v2") && tags.iter().any(|t| t == "docker.io/library/busy:v2"),
        "{ls}"
    );

    let theirs = umoci_unpack("L:v2", &w.join("U"), w);
    for (name, reference) in [("by-tag", "v2"), ("by-prefix", &ids[0][7..19])] {
        let ours = w.join(name);
        ok(utter(&data).args(["image", "unpack", reference]).arg(&ours));
        assert_same_tree(&ours, &theirs);
    }
    assert!(
        !w.join("by-tag/etc/motd.again").exists(),
        "the whiteout was applied"
    );
    assert!(
        !w.join("by-tag/var/old").exists(),
        "the deleted directory is gone"
    );

    // The exported layout passes skopeo and umoci with the same config and diffIDs.
    ok(utter(&data)
        .args(["image", "export", "v2"])
        .arg(format!("oci:{}/E:out", w.display())));
    let inspect = json(&tool("skopeo", &["inspect", "oci:E:out"], w));
    assert_eq!(inspect["Digest"].as_str(), Some(ids[0].as_str()));
    let ours = json(&tool(
        "skopeo",
        &["inspect", "--raw", "--config", "oci:E:out"],
        w,
    ));
    let original = json(&tool(
        "skopeo",
        &["inspect", "--raw", "--config", "oci:L:v2"],
        w,
    ));
    assert_eq!(ours, original, "export keeps the config byte for byte");
    let exported = umoci_unpack("E:out", &w.join("EU"), w);
    assert_same_tree(&exported, &theirs);
    // Exporting again into the same layout writes nothing new and keeps one entry per tag.
    ok(utter(&data)
        .args(["image", "export", "v2"])
        .arg(format!("oci:{}/E:out", w.display())));
    let index = json(&std::fs::read_to_string(w.join("E/index.json")).unwrap());
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1, "{index}");
}

#[test]
fn build_is_reproducible_and_tools_read_it() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let data = w.join("data");
    rootfs(&w.join("app"));
    let build = |tag: &str| {
        json(&ok(utter(&data)
            .args(["image", "build"])
            .arg(w.join("app"))
            .args(["--entrypoint", "/bin/sh -c", "--cmd", r#"["echo hi"]"#])
            .args([
                "--env",
                "GREETING=hi",
                "--workdir",
                "/tmp",
                "--tag",
                tag,
                "--json",
            ])))
    };
    let a = build("app:1");
    let b = build("app:2");
    assert_eq!(a["id"], b["id"], "the same directory builds the same image");
    let ls = json(&ok(utter(&data).args(["image", "ls", "--json"])));
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["tags"], serde_json::json!(["app:1", "app:2"]));

    ok(utter(&data)
        .args(["image", "export", "app:1"])
        .arg(format!("oci:{}/E:app", w.display())));
    let config = json(&tool("skopeo", &["inspect", "--config", "oci:E:app"], w));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["echo hi"]));
    assert_eq!(config["config"]["WorkingDir"], "/tmp");
    assert!(
        config["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "GREETING=hi")
    );
    let unpacked = umoci_unpack("E:app", &w.join("U"), w);
    assert_eq!(
        std::fs::read(unpacked.join("etc/motd")).unwrap(),
        b"hello\n"
    );
    assert_eq!(
        std::fs::metadata(unpacked.join("etc/motd")).unwrap().ino(),
        std::fs::metadata(unpacked.join("etc/motd.again"))
            .unwrap()
            .ino(),
        "hard links stay links"
    );
    assert_eq!(
        std::fs::metadata(unpacked.join("bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        std::fs::metadata(unpacked.join("etc/motd")).unwrap().uid(),
        0,
        "owners are 0:0"
    );

    // A one-file image from a static binary.
    let v = json(&ok(utter(&data)
        .args(["image", "build", "--binary"])
        .arg(busybox())
        .args(["--tag", "bb", "--json"])));
    assert_eq!(v["layers"].as_array().unwrap().len(), 1);
    let inspect = ok(utter(&data).args(["image", "inspect", "bb"]));
    assert!(inspect.contains(r#"entry     ["/busybox"]"#), "{inspect}");
    let root = w.join("bb");
    ok(utter(&data).args(["image", "unpack", "bb"]).arg(&root));
    let names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("busybox")]);
    assert_eq!(
        std::fs::metadata(root.join("busybox")).unwrap().mode() & 0o777,
        0o755
    );
}

#[test]
fn tags_removal_and_bad_input() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let data = w.join("data");
    // Reading commands on an empty data directory create nothing.
    let ls = ok(utter(&data).args(["image", "ls"]));
    assert!(ls.contains("no images yet"), "{ls}");
    assert!(!data.exists());
    let err = fails(utter(&data).args(["image", "unpack", "nothing", "x"]));
    assert!(err.contains("no utter data"), "{err}");

    std::fs::create_dir_all(w.join("app")).unwrap();
    file(&w.join("app"), "hello", b"hi");
    let v = json(&ok(utter(&data)
        .args(["image", "build"])
        .arg(w.join("app"))
        .args(["-t", "one", "-t", "two", "--json"])));
    let id = v["id"].as_str().unwrap().to_string();

    let err = fails(utter(&data).args(["image", "import", "docker://busybox"]));
    assert!(err.contains("oci:DIR[:TAG]"), "{err}");
    let err = fails(
        utter(&data)
            .args(["image", "import"])
            .arg(format!("oci:{}/missing", w.display())),
    );
    assert!(err.contains("not an OCI image layout"), "{err}");
    let err = fails(utter(&data).args(["image", "unpack", "three", "x"]));
    assert!(
        err.contains("no image `three`") && err.contains("utter image ls"),
        "{err}"
    );
    let err = fails(
        utter(&data)
            .args(["image", "build"])
            .arg(w.join("app"))
            .args(["--tag", "bad tag"]),
    );
    assert!(err.contains("cannot be a tag"), "{err}");
    std::fs::create_dir_all(w.join("full")).unwrap();
    file(&w.join("full"), "x", b"x");
    let err = fails(
        utter(&data)
            .args(["image", "unpack", "one"])
            .arg(w.join("full")),
    );
    assert!(err.contains("not empty"), "{err}");
    let err = fails(utter(&data).args(["image", "export", "one", "dir:/tmp/x"]));
    assert!(err.contains("oci:DIR[:TAG]"), "{err}");

    // A tag shared with another is removed alone; the last one takes the image.
    let out = ok(utter(&data).args(["image", "rm", "one"]));
    assert!(out.contains("untagged one"), "{out}");
    let out = ok(utter(&data).args(["image", "tag", "two", "three"]));
    assert!(out.contains("three ->"), "{out}");
    let out = ok(utter(&data).args(["image", "rm", &id[..12]]));
    assert!(
        out.contains("removed") && out.contains("1 layers released"),
        "{out}"
    );
    let ls = json(&ok(utter(&data).args(["image", "ls", "--json"])));
    assert_eq!(ls, serde_json::json!([]));
    let gc = ok(utter(&data).args(["chunks", "gc"]));
    assert!(
        !gc.contains(" 0 chunks"),
        "the layer's chunks are garbage now: {gc}"
    );
}
