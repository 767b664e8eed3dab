//! `utter key …`, with `ssh-keygen` as the oracle.

use super::*;

#[test]
fn key_gen_and_show_transcript() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // $ utter key show   (nothing yet)
    let err = fails(utter(&data).args(["key", "show"]));
    assert!(err.contains("utter key gen"), "{err}");

    // $ utter key gen
    let public = ok(utter(&data).args(["key", "gen"]));
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    let private = data.join("keys/node");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
    }
    // ssh-keygen derives the same public key from the file utter wrote.
    let derived = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&private)
        .output()
        .unwrap();
    assert!(derived.status.success());
    let derived = String::from_utf8(derived.stdout).unwrap();
    assert_eq!(
        derived.split_whitespace().take(2).collect::<Vec<_>>(),
        public.split_whitespace().collect::<Vec<_>>()
    );

    // $ utter key gen   (again: refused, key unchanged)
    let before = std::fs::read(&private).unwrap();
    let err = fails(utter(&data).args(["key", "gen"]));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&private).unwrap(), before);

    // $ utter key show [--allowed-signers | --json]
    assert_eq!(ok(utter(&data).args(["key", "show"])), public);
    let line = ok(utter(&data).args(["key", "show", "--allowed-signers"]));
    assert_eq!(
        line.trim(),
        format!("utter-node namespaces=\"git,utter-tx\" {}", public.trim())
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(utter(&data).args(["key", "show", "--json"]))).unwrap();
    assert_eq!(json["public_key"], public.trim());

    // The allowed-signers line works with ssh-keygen for a signature made
    // with the key file.
    let allowed = file(tmp.path(), "allowed", line.as_bytes());
    let msg = file(tmp.path(), "msg", b"hello");
    let sign = Command::new("ssh-keygen")
        .args(["-Y", "sign", "-n", "utter-tx", "-q", "-f"])
        .arg(&private)
        .arg(&msg)
        .status()
        .unwrap();
    assert!(sign.success());
    let verify = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "utter-tx", "-I", "utter-node", "-f"])
        .arg(&allowed)
        .arg("-s")
        .arg(tmp.path().join("msg.sig"))
        .stdin(std::fs::File::open(&msg).unwrap())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // A damaged key file is a clear error naming it.
    std::fs::write(&private, b"not a key").unwrap();
    let err = fails(utter(&data).args(["key", "show"]));
    assert!(err.contains("keys/node"), "{err}");
}
