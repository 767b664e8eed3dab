//! Export to an OCI image layout that skopeo, umoci and other tools read.
//!
//! Layers are written uncompressed, named by their diffIDs, so the layout's
//! manifest is byte for byte the one utter stores and its digest is the
//! image id. An existing layout gains the image (replacing what had the same
//! tag); blobs it already has are not written again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::digest::HashingWriter;
use crate::import::{Progress, media};
use crate::store::{Image, Images, write_atomic};
use crate::{Digest, Error};

/// An export failed; the layout is as it was, plus whole blobs.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file of the layout could not be written or read.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The target is not something export writes.
    #[error("{0}")]
    Target(String),
    /// A stored layer did not read back as its digest.
    #[error(
        "layer {expected} read back as {actual}: the chunk store is damaged; run `utter chunks verify`"
    )]
    Damaged {
        /// The diffID.
        expected: Digest,
        /// What was read.
        actual: Digest,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// Parses an export target: `oci:DIR[:TAG]`.
pub fn parse_target(s: &str) -> Result<(PathBuf, Option<String>), ExportError> {
    let bad = || ExportError::Target(format!("`{s}` is not an export target: use oci:DIR[:TAG]"));
    let rest = s.strip_prefix("oci:").ok_or_else(bad)?;
    crate::import::split_path_tag(rest).ok_or_else(bad)
}

impl Images {
    /// Writes `image` into the OCI layout at `dir`, under `tag` if given.
    pub fn export(
        &self,
        image: &Image,
        dir: &Path,
        tag: Option<&str>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), ExportError> {
        let io_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| ExportError::Io { what, path, source }
        };
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err("cannot create", &blobs))?;
        let layout = dir.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let total = image.size();
        let mut done = 0;
        for layer in &image.layers {
            let path = blobs.join(layer.diff_id.hex());
            if fs::metadata(&path).is_ok_and(|m| m.len() == layer.size) {
                done += layer.size;
                progress(Progress { done, total });
                continue;
            }
            let mut tmp = tempfile::NamedTempFile::new_in(&blobs)
                .map_err(io_err("cannot create a file in", &blobs))?;
            let tmp_path = tmp.path().to_path_buf();
            let mut reader = self.layer_reader(layer)?;
            let mut out =
                HashingWriter::new(io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut()));
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf).map_err(io_err(
                    "cannot read layer",
                    Path::new(&layer.diff_id.to_string()),
                ))?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])
                    .map_err(io_err("cannot write", &tmp_path))?;
                progress(Progress {
                    done: done + out.count(),
                    total,
                });
            }
            let (actual, _, mut w) = out.finish();
            w.flush().map_err(io_err("cannot write", &path))?;
            drop(w);
            if actual != layer.diff_id {
                return Err(ExportError::Damaged {
                    expected: layer.diff_id,
                    actual,
                });
            }
            tmp.as_file()
                .sync_all()
                .map_err(io_err("cannot sync", &path))?;
            tmp.persist(&path)
                .map_err(|e| io_err("cannot write", &path)(e.error))?;
            done += layer.size;
            progress(Progress { done, total });
        }
        for (bytes, digest) in [
            (self.config_bytes(image)?, image.config),
            (self.manifest_bytes(image)?, image.id),
        ] {
            let path = blobs.join(digest.hex());
            if !fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
                write_atomic(&path, &bytes)?;
            }
        }
        File::open(&blobs)
            .and_then(|d| d.sync_all())
            .map_err(io_err("cannot sync", &blobs))?;
        // index.json: keep what is there, replace the entry for this tag.
        let index_path = dir.join("index.json");
        let mut index: Value = match fs::read(&index_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ExportError::Target(format!(
                    "{} is not a JSON image index: {e}",
                    index_path.display()
                ))
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                serde_json::json!({"schemaVersion": 2, "mediaType": media::INDEX, "manifests": []})
            }
            Err(e) => return Err(io_err("cannot read", &index_path)(e)),
        };
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| {
                ExportError::Target(format!("{} has no manifests list", index_path.display()))
            })?;
        let ref_name = "org.opencontainers.image.ref.name";
        let id = image.id.to_string();
        manifests.retain(|m| {
            let name = m.pointer(&format!("/annotations/{}", ref_name.replace('/', "~1")));
            match tag {
                Some(t) => name.and_then(Value::as_str) != Some(t),
                None => !(name.is_none() && m.get("digest").and_then(Value::as_str) == Some(&id)),
            }
        });
        let manifest_len = self.manifest_bytes(image)?.len();
        let mut desc = serde_json::json!({
            "mediaType": media::MANIFEST,
            "digest": id,
            "size": manifest_len,
        });
        if let Some(t) = tag {
            desc["annotations"] = serde_json::json!({ ref_name: t });
        }
        manifests.push(desc);
        let bytes = serde_json::to_vec(&index).map_err(|e| ExportError::Target(e.to_string()))?;
        write_atomic(&index_path, &bytes)?;
        Ok(())
    }
}
