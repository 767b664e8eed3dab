//! Images that arrive from another node: their two documents and their
//! layers' chunkstore blobs (fetched by the caller), checked against each
//! other before the image is recorded. Nothing a peer says is taken on
//! trust: the manifest must hash to the image id, the config to the
//! manifest's config digest, and every layer's bytes to its diffID.

use std::io::Read;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use utter_chunkstore::ManifestId;

use crate::import::media;
use crate::store::NewImage;
use crate::{Digest, Image, Images, Layer};

/// What a node sends of an image: its documents byte for byte, and where
/// each layer's uncompressed tar is in the chunk store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDocs {
    /// The OCI manifest as stored (its digest is the image's id).
    pub manifest: Vec<u8>,
    /// The config document.
    pub config: Vec<u8>,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
}

/// Why an image from elsewhere was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The documents do not describe this image.
    #[error("image {image} as sent does not hold together: {why}")]
    Inconsistent {
        /// The image id asked for.
        image: Digest,
        /// What does not match.
        why: String,
    },
    /// A layer's bytes are not its diffID's.
    #[error("layer {diff_id} of image {image} hashes to {actual}")]
    LayerMismatch {
        /// The image.
        image: Digest,
        /// The layer.
        diff_id: Digest,
        /// What its bytes hash to.
        actual: Digest,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::Error),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: String,
    digest: Digest,
    size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    config: Desc,
    layers: Vec<Desc>,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

impl ImageDocs {
    /// The documents of a stored image, to send to another node.
    pub fn of(images: &Images, image: &Image) -> Result<Self, crate::Error> {
        let read = |what, digest: &Digest| {
            let bytes = std::fs::read(images.blob_path(digest)).ok();
            bytes
                .filter(|b| Digest::of(b) == *digest)
                .ok_or(crate::Error::Damaged {
                    what,
                    digest: *digest,
                })
        };
        Ok(Self {
            manifest: read("manifest", &image.id)?,
            config: read("config", &image.config)?,
            layers: image.layers.clone(),
        })
    }

    /// Checks that the documents describe image `id` with these layers:
    /// the manifest hashes to `id`, names this config by digest and size,
    /// and lists exactly these layers (uncompressed tars, by diffID and
    /// size), as the config's diffIDs do.
    pub fn check(&self, id: &Digest) -> Result<(), AdoptError> {
        let bad = |why: String| AdoptError::Inconsistent { image: *id, why };
        if Digest::of(&self.manifest) != *id {
            return Err(bad("the manifest does not hash to the image id".into()));
        }
        let m: Manifest = serde_json::from_slice(&self.manifest)
            .map_err(|e| bad(format!("the manifest does not parse: {e}")))?;
        if m.schema_version != 2 {
            return Err(bad(format!("schema version {}", m.schema_version)));
        }
        if m.config.digest != Digest::of(&self.config) || m.config.size != self.config.len() as u64
        {
            return Err(bad("the config is not the one the manifest names".into()));
        }
        let c: Config = serde_json::from_slice(&self.config)
            .map_err(|e| bad(format!("the config does not parse: {e}")))?;
        if m.layers.len() != self.layers.len() || c.rootfs.diff_ids.len() != self.layers.len() {
            return Err(bad(format!(
                "{} layers sent, the manifest lists {} and the config {}",
                self.layers.len(),
                m.layers.len(),
                c.rootfs.diff_ids.len()
            )));
        }
        for ((d, diff_id), layer) in m.layers.iter().zip(&c.rootfs.diff_ids).zip(&self.layers) {
            if d.media_type != media::LAYER
                || d.digest != layer.diff_id
                || *diff_id != layer.diff_id
                || d.size != layer.size
            {
                return Err(bad(format!(
                    "layer {} is not what the manifest and config say",
                    layer.diff_id
                )));
            }
        }
        Ok(())
    }

    /// The chunkstore blobs this image's layers need.
    pub fn blobs(&self) -> Vec<ManifestId> {
        self.layers.iter().map(|l| l.blob).collect()
    }
}

impl Images {
    /// Records image `id` from `docs` whose layer blobs the caller fetched
    /// into the chunk store: checks the documents ([`ImageDocs::check`]),
    /// hashes every layer not already known under its diffID, pins the
    /// layers and records the image. An image already here is returned as
    /// it is.
    pub fn adopt(&self, id: &Digest, docs: &ImageDocs, source: &str) -> Result<Image, AdoptError> {
        if let Ok(image) = self.get(&id.to_string()) {
            return Ok(image);
        }
        docs.check(id)?;
        let mut layers = Vec::with_capacity(docs.layers.len());
        let release = |layers: &[(Layer, bool)]| {
            for (l, pinned) in layers {
                if *pinned {
                    let _ = self.chunks().unpin(&l.blob);
                }
            }
        };
        for layer in &docs.layers {
            if self
                .known_layer(&layer.diff_id)?
                .is_some_and(|known| known.blob == layer.blob)
            {
                layers.push((layer.clone(), false));
                continue;
            }
            if let Err(e) = self.check_layer(id, layer) {
                release(&layers);
                return Err(e);
            }
            self.chunks().pin(&layer.blob).map_err(crate::Error::from)?;
            layers.push((layer.clone(), true));
        }
        let committed = self.commit(NewImage {
            manifest: docs.manifest.clone(),
            config: docs.config.clone(),
            layers: layers.clone(),
            source: source.to_string(),
            source_digest: None,
            tags: Vec::new(),
        });
        committed.map_err(|e| {
            release(&layers);
            e.into()
        })
    }

    /// Reads a layer's blob and checks its length and SHA-256.
    fn check_layer(&self, image: &Digest, layer: &Layer) -> Result<(), AdoptError> {
        let mut reader = self.layer_reader(layer)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| crate::Error::io("cannot read a layer of", "the chunk store")(e))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            hasher.update(&buf[..n]);
        }
        let actual = Digest::from_bytes(hasher.finalize().into());
        if actual != layer.diff_id || len != layer.size {
            return Err(AdoptError::LayerMismatch {
                image: *image,
                diff_id: layer.diff_id,
                actual,
            });
        }
        Ok(())
    }
}
