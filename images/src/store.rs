//! The image store: an index of images, tags and layers in one JSON file,
//! manifest and config documents as files named by digest, layer tars as
//! pinned blobs in the chunkstore, and a rootfs cache per image.
//!
//! ```text
//! <dir>/index.json               images, tags, layers (rewritten atomically)
//! <dir>/blobs/sha256/<hex>       manifests and configs, exactly as digested
//! <dir>/rootfs/<hex>/            unpacked rootfs of an image (the runtime's cache)
//! <dir>/lock                     held (flock) by every change
//! ```
//!
//! Every layer record owns exactly one pin on its chunkstore blob, so `gc`
//! never collects a layer an image still names.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use utter_chunkstore::{BlobReader, ManifestId, Store};

use crate::{Digest, Error};

const INDEX_VERSION: u32 = 1;

/// One layer: the uncompressed tar, stored chunked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// The digest of the uncompressed tar (the config's diffID).
    pub diff_id: Digest,
    /// Its length in bytes.
    pub size: u64,
    /// The chunkstore blob holding it.
    pub blob: ManifestId,
}

/// A stored image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The digest of the image's OCI manifest as utter stores it (layers
    /// uncompressed); the image's identity.
    pub id: Digest,
    /// The digest of its config document.
    pub config: Digest,
    /// Its layers, bottom first.
    pub layers: Vec<Layer>,
    /// Tags naming it.
    pub tags: Vec<String>,
    /// Where it came from (`oci:…`, `docker-archive:…`, `build:…`).
    pub source: String,
    /// The manifest digest at the source, when it had one and it differs.
    pub source_digest: Option<Digest>,
    /// When it was added, seconds since the epoch.
    pub added: u64,
}

impl Image {
    /// Uncompressed size of all layers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// What `remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The tag removed, when a tag was named and other tags remain.
    pub untagged: Option<String>,
    /// The image removed, when it was.
    pub image: Option<Digest>,
    /// Layers no image names any more (their chunks are free for `gc`).
    pub layers_released: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    version: u32,
    #[serde(default)]
    images: BTreeMap<Digest, ImageRecord>,
    #[serde(default)]
    tags: BTreeMap<String, Digest>,
    #[serde(default)]
    layers: BTreeMap<Digest, LayerRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    config: Digest,
    layers: Vec<Digest>,
    source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_digest: Option<Digest>,
    added: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRecord {
    blob: String,
    size: u64,
}

/// An image ready to be recorded: documents written, layers stored (each
/// stored layer carrying one fresh pin).
pub(crate) struct NewImage {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub layers: Vec<(Layer, bool)>,
    pub source: String,
    pub source_digest: Option<Digest>,
    pub tags: Vec<String>,
}

/// Exclusive access to the store's index while it lives.
pub(crate) struct Lock {
    _file: File,
}

/// OCI images kept by one node.
#[derive(Clone)]
pub struct Images {
    catalog: Catalog,
    chunks: Store,
}

/// The read-only part of an image store: its index, manifests, configs
/// and rootfs cache paths, all plain files. [`Images`] derefs to it.
#[derive(Clone, Debug)]
pub struct Catalog {
    dir: PathBuf,
}

impl Images {
    /// Opens (creating if needed) the image store in `dir`, keeping layers
    /// in `chunks`.
    pub fn open(dir: impl AsRef<Path>, chunks: Store) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        for sub in ["blobs/sha256", "rootfs"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(Error::io("cannot create", &path))?;
        }
        Ok(Self {
            catalog: Catalog { dir },
            chunks,
        })
    }

    /// The chunk store holding the layers.
    pub fn chunks(&self) -> &Store {
        &self.chunks
    }

    pub(crate) fn lock(&self) -> Result<Lock, Error> {
        let path = self.dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("cannot open", &path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io("cannot lock", &path)(e.into()))?;
        Ok(Lock { _file: file })
    }

    fn write_index(&self, index: &Index, _lock: &Lock) -> Result<(), Error> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| Error::Index {
            path: self.index_path(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.index_path(), &bytes)
    }

    /// Writes a document under its digest (if absent) and returns the digest.
    pub(crate) fn write_doc(&self, bytes: &[u8]) -> Result<Digest, Error> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(digest);
        }
        write_atomic(&path, bytes)?;
        Ok(digest)
    }

    /// The layer already stored under `diff_id`, if its blob is present.
    pub(crate) fn known_layer(&self, diff_id: &Digest) -> Result<Option<Layer>, Error> {
        let index = self.read_index()?;
        let Some(rec) = index.layers.get(diff_id) else {
            return Ok(None);
        };
        let Ok(blob) = rec.blob.parse::<ManifestId>() else {
            return Ok(None);
        };
        if !self.chunks.has_manifest(&blob)? {
            return Ok(None);
        }
        Ok(Some(Layer {
            diff_id: *diff_id,
            size: rec.size,
            blob,
        }))
    }

    /// Reads a layer's uncompressed tar.
    pub fn layer_reader(&self, layer: &Layer) -> Result<BlobReader, Error> {
        Ok(self.chunks.get(&layer.blob)?)
    }

    /// Records a new image (documents, layers, tags). Layers flagged `true`
    /// were stored by the caller with a pin this record now owns.
    pub(crate) fn commit(&self, new: NewImage) -> Result<Image, Error> {
        for tag in &new.tags {
            check_tag(tag)?;
        }
        let manifest = self.write_doc(&new.manifest)?;
        self.write_doc(&new.config)?;
        let lock = self.lock()?;
        let mut index = self.read_index()?;
        let mut extra_pins = Vec::new();
        for (layer, pinned) in &new.layers {
            match index.layers.get(&layer.diff_id) {
                Some(rec) if rec.blob == layer.blob.to_string() => {
                    if *pinned {
                        extra_pins.push(layer.blob);
                    }
                }
                _ => {
                    if !*pinned {
                        // A layer found in the index when the import began and
                        // replaced since: take a pin of our own.
                        self.chunks.pin(&layer.blob)?;
                    }
                    index.layers.insert(
                        layer.diff_id,
                        LayerRecord {
                            blob: layer.blob.to_string(),
                            size: layer.size,
                        },
                    );
                }
            }
        }
        let added = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let config = Digest::of(&new.config);
        index.images.insert(
            manifest,
            ImageRecord {
                config,
                layers: new.layers.iter().map(|(l, _)| l.diff_id).collect(),
                source: new.source,
                source_digest: new.source_digest.filter(|d| *d != manifest),
                added,
            },
        );
        for tag in new.tags {
            index.tags.insert(tag, manifest);
        }
        self.write_index(&index, &lock)?;
        for blob in extra_pins {
            self.chunks.unpin(&blob)?;
        }
        let rec = index.images.get(&manifest).ok_or_else(|| Error::Index {
            path: self.index_path(),
            reason: "the image just written is missing".into(),
        })?;
        self.image_from(&index, &manifest, rec)
    }

    /// Points `tag` at the image `reference` names (moving it if it named
    /// another image).
    pub fn tag(&self, reference: &str, tag: &str) -> Result<Digest, Error> {
        check_tag(tag)?;
        let lock = self.lock()?;
        let mut index = self.read_index()?;
        let id = Catalog::resolve_in(&index, reference)?;
        index.tags.insert(tag.to_string(), id);
        self.write_index(&index, &lock)?;
        Ok(id)
    }

    /// Removes a tag, or an image: naming an image by a tag it shares with
    /// other tags removes only that tag; naming it by digest, or by its last
    /// tag, removes the image, its tags and its rootfs cache, and releases
    /// the layers no other image uses.
    pub fn remove(&self, reference: &str) -> Result<Removed, Error> {
        let lock = self.lock()?;
        let mut index = self.read_index()?;
        let id = Catalog::resolve_in(&index, reference)?;
        let tags: Vec<String> = index
            .tags
            .iter()
            .filter(|(_, d)| **d == id)
            .map(|(t, _)| t.clone())
            .collect();
        if index.tags.contains_key(reference) && tags.len() > 1 {
            index.tags.remove(reference);
            self.write_index(&index, &lock)?;
            return Ok(Removed {
                untagged: Some(reference.to_string()),
                image: None,
                layers_released: 0,
            });
        }
        let Some(rec) = index.images.remove(&id) else {
            return Err(Error::UnknownRef(reference.to_string()));
        };
        index.tags.retain(|_, d| *d != id);
        let mut released = Vec::new();
        for diff in &rec.layers {
            let used = index.images.values().any(|r| r.layers.contains(diff));
            if !used && let Some(l) = index.layers.remove(diff) {
                released.push(l.blob);
            }
        }
        let config_used = index.images.values().any(|r| r.config == rec.config);
        self.write_index(&index, &lock)?;
        // The index no longer names them: what follows only frees space, and
        // a crash here leaves files and pins nothing refers to, never a hole.
        for blob in &released {
            if let Ok(id) = blob.parse::<ManifestId>() {
                self.chunks.unpin(&id)?;
            }
        }
        let _ = fs::remove_file(self.blob_path(&id));
        if !config_used {
            let _ = fs::remove_file(self.blob_path(&rec.config));
        }
        let cache = self.rootfs_path(&id);
        if cache.exists() {
            crate::unpack::remove_tree(&cache).map_err(Error::io("cannot remove", &cache))?;
        }
        Ok(Removed {
            untagged: None,
            image: Some(id),
            layers_released: released.len(),
        })
    }
}

impl std::ops::Deref for Images {
    type Target = Catalog;

    /// Everything that reads the catalog works on the store too.
    fn deref(&self) -> &Catalog {
        &self.catalog
    }
}

impl Catalog {
    /// Opens the catalog of the image store in `dir` for reading, without
    /// its chunk store: enough to find an image, read its config and find
    /// its cached rootfs (not to unpack or change anything).
    pub fn open(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// Where the unpacked rootfs of `image` is cached.
    pub fn rootfs_path(&self, image: &Digest) -> PathBuf {
        self.dir.join("rootfs").join(image.hex())
    }

    fn read_index(&self) -> Result<Index, Error> {
        let path = self.index_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Index {
                    version: INDEX_VERSION,
                    ..Index::default()
                });
            }
            Err(e) => return Err(Error::io("cannot read", &path)(e)),
        };
        let index: Index = serde_json::from_slice(&bytes).map_err(|e| Error::Index {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if index.version != INDEX_VERSION {
            return Err(Error::Index {
                path,
                reason: format!(
                    "version {} (this utter reads version {INDEX_VERSION}); upgrade utter",
                    index.version
                ),
            });
        }
        Ok(index)
    }

    /// Reads a document and checks it against its digest.
    pub(crate) fn read_doc(&self, digest: &Digest, what: &'static str) -> Result<Vec<u8>, Error> {
        let bytes = fs::read(self.blob_path(digest)).map_err(|_| Error::Damaged {
            what,
            digest: *digest,
        })?;
        if Digest::of(&bytes) != *digest {
            return Err(Error::Damaged {
                what,
                digest: *digest,
            });
        }
        Ok(bytes)
    }

    fn image_from(&self, index: &Index, id: &Digest, rec: &ImageRecord) -> Result<Image, Error> {
        let layers = rec
            .layers
            .iter()
            .map(|d| {
                let l = index.layers.get(d).ok_or_else(|| Error::Index {
                    path: self.index_path(),
                    reason: format!("image {id} names layer {d}, which is not recorded"),
                })?;
                let blob = l.blob.parse().map_err(|_| Error::Index {
                    path: self.index_path(),
                    reason: format!("layer {d} has a bad blob id `{}`", l.blob),
                })?;
                Ok(Layer {
                    diff_id: *d,
                    size: l.size,
                    blob,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Image {
            id: *id,
            config: rec.config,
            layers,
            tags: index
                .tags
                .iter()
                .filter(|(_, d)| *d == id)
                .map(|(t, _)| t.clone())
                .collect(),
            source: rec.source.clone(),
            source_digest: rec.source_digest,
            added: rec.added,
        })
    }

    /// Every stored image, newest first.
    pub fn list(&self) -> Result<Vec<Image>, Error> {
        let index = self.read_index()?;
        let mut out = index
            .images
            .iter()
            .map(|(id, rec)| self.image_from(&index, id, rec))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| b.added.cmp(&a.added).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn resolve_in(index: &Index, reference: &str) -> Result<Digest, Error> {
        if let Some(d) = index.tags.get(reference) {
            return Ok(*d);
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        let is_hex = hex.len() >= 4 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_hex {
            let found: Vec<&Digest> = index
                .images
                .keys()
                .filter(|d| d.hex().starts_with(hex))
                .collect();
            match found.as_slice() {
                [one] => return Ok(**one),
                [] => {}
                many => {
                    return Err(Error::AmbiguousRef {
                        reference: reference.to_string(),
                        count: many.len(),
                    });
                }
            }
            // The digest an image had at its source also names it.
            let by_source: Vec<&Digest> = index
                .images
                .iter()
                .filter(|(_, r)| r.source_digest.is_some_and(|s| s.hex().starts_with(hex)))
                .map(|(d, _)| d)
                .collect();
            if let [one] = by_source.as_slice() {
                return Ok(**one);
            }
        }
        Err(Error::UnknownRef(reference.to_string()))
    }

    /// The image a tag, digest, or unique digest prefix (at least 4 hex
    /// digits) names.
    pub fn get(&self, reference: &str) -> Result<Image, Error> {
        let index = self.read_index()?;
        let id = Catalog::resolve_in(&index, reference)?;
        let rec = index
            .images
            .get(&id)
            .ok_or_else(|| Error::UnknownRef(reference.to_string()))?;
        self.image_from(&index, &id, rec)
    }

    /// The image's manifest exactly as digested.
    pub fn manifest_bytes(&self, image: &Image) -> Result<Vec<u8>, Error> {
        self.read_doc(&image.id, "manifest")
    }

    /// The image's config exactly as digested.
    pub fn config_bytes(&self, image: &Image) -> Result<Vec<u8>, Error> {
        self.read_doc(&image.config, "config")
    }

    /// The image's config, parsed.
    pub fn config(&self, image: &Image) -> Result<oci_spec::image::ImageConfiguration, Error> {
        let bytes = self.config_bytes(image)?;
        serde_json::from_slice(&bytes).map_err(|_| Error::Damaged {
            what: "config",
            digest: image.config,
        })
    }
}

/// Tags are what users type: letters, digits and `._-/:@`, at most 128
/// characters, not something that reads as a digest.
pub fn check_tag(tag: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::BadTag {
            tag: tag.chars().take(130).collect(),
            reason,
        })
    };
    if tag.is_empty() || tag.len() > 128 {
        return bad("a tag has 1 to 128 characters");
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b))
    {
        return bad("use only letters, digits and . _ - / : @");
    }
    if tag.starts_with('-') || tag.starts_with('.') {
        return bad("a tag starts with a letter or digit");
    }
    let hex = tag.strip_prefix("sha256:").unwrap_or(tag);
    if hex.len() >= 4 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return bad("it reads as a digest");
    }
    Ok(())
}

/// Writes `bytes` to `path` through a synced temporary file and a rename,
/// then syncs the directory: readers see the old or the new file, whole.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(Error::io("cannot create a file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(Error::io("cannot write", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| Error::io("cannot replace", path)(e.error))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("cannot sync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_checked() {
        for good in ["counter", "counter:v2", "ex/hello-sh:latest", "a", "v1.2"] {
            assert!(check_tag(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-x",
            "a b",
            "ümlaut",
            "abcd",
            "sha256:abcd",
            &"x".repeat(129),
        ] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }
}
