//! Import from the transports skopeo names: `oci:DIR[:TAG]`,
//! `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:NAME:TAG]`.
//!
//! Every digest is checked as the bytes stream past (manifest, config, each
//! compressed blob, each uncompressed layer against the config's diffID); a
//! mismatch unpins what was stored, so nothing of a rejected import stays
//! reachable. Layers are decompressed on their own thread while the
//! chunkstore cuts, hashes and writes on the others.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utter_chunkstore::PutOptions;

use crate::digest::HashingReader;
use crate::pipe;
use crate::store::{Image, Images, Layer, NewImage};
use crate::tar;
use crate::{Digest, Error};

/// Media types utter writes.
pub mod media {
    /// An OCI image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// An OCI image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// An OCI image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// An uncompressed OCI layer.
    pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub(crate) const DOCKER_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
}

/// The largest manifest, index or config accepted.
pub const MAX_DOCUMENT: u64 = 4 << 20;

/// Where an image comes from, spelled as skopeo spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An OCI image layout directory, optionally one tag in it.
    OciDir {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick.
        tag: Option<String>,
    },
    /// A tar of an OCI image layout.
    OciArchive {
        /// The archive.
        file: PathBuf,
        /// The tag to pick.
        tag: Option<String>,
    },
    /// What `docker save` writes.
    DockerArchive {
        /// The archive.
        file: PathBuf,
        /// A `name:tag` among its RepoTags, or `@N` for the N-th image.
        reference: Option<String>,
    },
}

/// A source string that is not one of the transports.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not an image source: use oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker-archive:FILE[:NAME:TAG]"
)]
pub struct ParseSourceError(pub String);

impl FromStr for Source {
    type Err = ParseSourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseSourceError(s.to_string());
        let (transport, rest) = s.split_once(':').ok_or_else(bad)?;
        let (path, tag) = split_path_tag(rest).ok_or_else(bad)?;
        Ok(match transport {
            "oci" => Self::OciDir { dir: path, tag },
            "oci-archive" => Self::OciArchive { file: path, tag },
            "docker-archive" => Self::DockerArchive {
                file: path,
                reference: tag,
            },
            _ => return Err(bad()),
        })
    }
}

/// Splits `PATH[:TAG]` at the first colon, as skopeo does; `None` for an
/// empty path.
pub(crate) fn split_path_tag(rest: &str) -> Option<(PathBuf, Option<String>)> {
    let (path, tag) = match rest.split_once(':') {
        Some((p, t)) if !t.is_empty() => (p, Some(t.to_string())),
        Some((p, _)) => (p, None),
        None => (rest, None),
    };
    (!path.is_empty()).then(|| (PathBuf::from(path), tag))
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, p, tag) = match self {
            Self::OciDir { dir, tag } => ("oci", dir, tag),
            Self::OciArchive { file, tag } => ("oci-archive", file, tag),
            Self::DockerArchive { file, reference } => ("docker-archive", file, reference),
        };
        write!(f, "{t}:{}", p.display())?;
        if let Some(tag) = tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

/// Limits and names for one import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Tags to give the image; empty means the source's own name, if any.
    pub tags: Vec<String>,
    /// The largest uncompressed layer accepted.
    pub max_layer_size: u64,
    /// Past 256 MiB of output, the largest accepted ratio of uncompressed
    /// to compressed bytes (a decompression bomb exceeds it).
    pub max_ratio: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            tags: Vec::new(),
            max_layer_size: 64 << 30,
            max_ratio: 1000,
        }
    }
}

/// An import failed; nothing it stored is reachable.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The source cannot be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The source is not a valid image of its transport.
    #[error("{source_name}: {reason}")]
    Invalid {
        /// The source, as given.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// Bytes do not match the digest that names them.
    #[error(
        "{source_name}: {what} should have digest {expected} but has {actual}; the image is damaged or was tampered with, nothing was imported"
    )]
    DigestMismatch {
        /// The source.
        source_name: String,
        /// What was checked (manifest, config, layer N).
        what: String,
        /// The digest the image claims.
        expected: Digest,
        /// The digest of the bytes.
        actual: Digest,
    },
    /// A blob's length differs from its descriptor.
    #[error(
        "{source_name}: {what} should be {expected} bytes but is {actual}; nothing was imported"
    )]
    SizeMismatch {
        /// The source.
        source_name: String,
        /// What was checked.
        what: String,
        /// Declared.
        expected: u64,
        /// Found.
        actual: u64,
    },
    /// A layer expands beyond the limits.
    #[error(
        "{source_name}: {what} {reason}; nothing was imported (raise --max-layer-size or --max-ratio if the image is trusted)"
    )]
    Limit {
        /// The source.
        source_name: String,
        /// Which layer.
        what: String,
        /// Which limit.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// Progress of an import or export, in bytes of blobs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// What an import stored.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The image.
    pub image: Image,
    /// Layers whose content was new to this node.
    pub new_layers: usize,
    /// Bytes the chunkstore grew by.
    pub new_bytes: u64,
}

// ---- reading the source ---------------------------------------------------

/// Where the bytes of named blobs are.
enum Blobs {
    Dir(PathBuf),
    Tar {
        file: PathBuf,
        members: HashMap<String, (u64, u64)>,
    },
}

impl Blobs {
    fn tar(file: &Path, source: &str) -> Result<Self, ImportError> {
        let f = File::open(file).map_err(|e| ImportError::Io {
            path: file.to_path_buf(),
            source: e,
        })?;
        let mut r = tar::Reader::new_seekable(BufReader::with_capacity(64 * 1024, f));
        let mut members = HashMap::new();
        loop {
            let entry = r.next_entry().map_err(|e| ImportError::Invalid {
                source_name: source.to_string(),
                reason: format!("not a readable tar archive: {e}"),
            })?;
            let Some(entry) = entry else { break };
            if members.len() > 1_000_000 {
                return Err(invalid(source, "more than a million members"));
            }
            let name = String::from_utf8_lossy(&entry.path);
            let name = name.trim_start_matches("./").to_string();
            match entry.kind {
                tar::Kind::File => {
                    members.insert(name, (r.position(), entry.size));
                }
                tar::Kind::Symlink | tar::Kind::Hardlink => {
                    // docker save links duplicate layers; resolve once read.
                    let target = String::from_utf8_lossy(&entry.link).into_owned();
                    let base = Path::new(&name).parent().unwrap_or(Path::new(""));
                    let resolved = normalize_member(&base.join(&target).to_string_lossy());
                    let key = if entry.kind == tar::Kind::Hardlink {
                        normalize_member(&target)
                    } else {
                        resolved
                    };
                    if let Some(&loc) = members.get(&key) {
                        members.insert(name, loc);
                    }
                }
                _ => {}
            }
        }
        Ok(Self::Tar {
            file: file.to_path_buf(),
            members,
        })
    }

    fn open(&self, name: &str, source: &str) -> Result<(Box<dyn Read + Send>, u64), ImportError> {
        match self {
            Self::Dir(dir) => {
                let path = dir.join(name);
                let f = File::open(&path).map_err(|e| ImportError::Io {
                    path: path.clone(),
                    source: e,
                })?;
                let len = f
                    .metadata()
                    .map_err(|e| ImportError::Io { path, source: e })?
                    .len();
                Ok((Box::new(f), len))
            }
            Self::Tar { file, members } => {
                let &(offset, len) = members.get(name).ok_or_else(|| {
                    invalid(source, &format!("the archive has no member `{name}`"))
                })?;
                let mut f = File::open(file).map_err(|e| ImportError::Io {
                    path: file.clone(),
                    source: e,
                })?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| ImportError::Io {
                        path: file.clone(),
                        source: e,
                    })?;
                Ok((Box::new(f.take(len)), len))
            }
        }
    }

    fn read_doc(&self, name: &str, source: &str) -> Result<Vec<u8>, ImportError> {
        let (r, len) = self.open(name, source)?;
        if len > MAX_DOCUMENT {
            return Err(invalid(
                source,
                &format!(
                    "`{name}` is {len} bytes; documents over {MAX_DOCUMENT} bytes are refused"
                ),
            ));
        }
        let mut out = Vec::with_capacity(len as usize);
        r.take(MAX_DOCUMENT)
            .read_to_end(&mut out)
            .map_err(|e| ImportError::Io {
                path: PathBuf::from(name),
                source: e,
            })?;
        Ok(out)
    }

    /// Reads the blob a descriptor names, checking digest and size.
    fn read_verified(
        &self,
        d: &Descriptor,
        what: &str,
        source: &str,
    ) -> Result<Vec<u8>, ImportError> {
        let name = blob_name(&d.digest);
        let bytes = self.read_doc(&name, source)?;
        let actual = Digest::of(&bytes);
        if actual != d.digest {
            return Err(ImportError::DigestMismatch {
                source_name: source.to_string(),
                what: what.to_string(),
                expected: d.digest,
                actual,
            });
        }
        if bytes.len() as u64 != d.size {
            return Err(ImportError::SizeMismatch {
                source_name: source.to_string(),
                what: what.to_string(),
                expected: d.size,
                actual: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }
}

fn normalize_member(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

fn invalid(source: &str, reason: &str) -> ImportError {
    ImportError::Invalid {
        source_name: source.to_string(),
        reason: reason.to_string(),
    }
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexDoc {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    #[serde(default)]
    media_type: String,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The manifest utter stores: layers uncompressed, named by their diffIDs.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ManifestOut {
    pub schema_version: u32,
    pub media_type: &'static str,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl ManifestOut {
    pub(crate) fn new(
        config: &[u8],
        layers: &[Layer],
        annotations: BTreeMap<String, String>,
    ) -> Self {
        let desc = |media: &str, digest, size| Descriptor {
            media_type: media.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
        };
        Self {
            schema_version: 2,
            media_type: media::MANIFEST,
            config: desc(media::CONFIG, Digest::of(config), config.len() as u64),
            layers: layers
                .iter()
                .map(|l| desc(media::LAYER, l.diff_id, l.size))
                .collect(),
            annotations,
        }
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest of strings and numbers serialises")
    }
}

/// One layer to read: where its blob is and what it must hash to.
struct LayerSource {
    member: String,
    blob: Option<(Digest, u64)>,
    diff_id: Digest,
}

/// A source resolved to documents and layer blobs.
struct Resolved {
    config: Vec<u8>,
    layers: Vec<LayerSource>,
    annotations: BTreeMap<String, String>,
    source_digest: Option<Digest>,
    name: Option<String>,
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        other => other,
    }
}

fn resolve_oci(blobs: &Blobs, tag: Option<&str>, source: &str) -> Result<Resolved, ImportError> {
    let index_bytes = blobs.read_doc("index.json", source)?;
    let index: IndexDoc = serde_json::from_slice(&index_bytes)
        .map_err(|e| invalid(source, &format!("index.json: {e}")))?;
    let ref_name = "org.opencontainers.image.ref.name";
    let candidates: Vec<&Descriptor> = match tag {
        Some(t) => index
            .manifests
            .iter()
            .filter(|d| d.annotations.get(ref_name).map(String::as_str) == Some(t))
            .collect(),
        None => index.manifests.iter().collect(),
    };
    let chosen = match candidates.as_slice() {
        [one] => (*one).clone(),
        [] => {
            let tags: Vec<&str> = index
                .manifests
                .iter()
                .filter_map(|d| d.annotations.get(ref_name).map(String::as_str))
                .collect();
            return Err(invalid(
                source,
                &match tag {
                    Some(t) => format!("no image tagged `{t}` (tags here: {})", tags.join(", ")),
                    None => "the layout holds no image".to_string(),
                },
            ));
        }
        _ => {
            return Err(invalid(
                source,
                "the layout holds several images; name one with :TAG",
            ));
        }
    };
    let name = chosen.annotations.get(ref_name).cloned();
    let mut desc = chosen;
    let mut depth = 0;
    // Follow image indexes (multi-platform images) to this host's platform.
    while desc.media_type == media::INDEX || desc.media_type == media::DOCKER_LIST {
        depth += 1;
        if depth > 4 {
            return Err(invalid(source, "image indexes nested more than 4 deep"));
        }
        let bytes = blobs.read_verified(&desc, "image index", source)?;
        let inner: IndexDoc = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(source, &format!("image index {}: {e}", desc.digest)))?;
        let arch = host_arch();
        desc = inner
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .cloned()
            .ok_or_else(|| {
                invalid(
                    source,
                    &format!("the image index has no linux/{arch} image"),
                )
            })?;
    }
    if !desc.media_type.is_empty()
        && desc.media_type != media::MANIFEST
        && desc.media_type != media::DOCKER_MANIFEST
    {
        return Err(invalid(
            source,
            &format!("`{}` is not an image manifest", desc.media_type),
        ));
    }
    let manifest_bytes = blobs.read_verified(&desc, "manifest", source)?;
    let manifest: ManifestDoc = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| invalid(source, &format!("manifest {}: {e}", desc.digest)))?;
    if !manifest.media_type.is_empty()
        && manifest.media_type != media::MANIFEST
        && manifest.media_type != media::DOCKER_MANIFEST
    {
        return Err(invalid(
            source,
            &format!(
                "manifest media type `{}` is not an image manifest",
                manifest.media_type
            ),
        ));
    }
    let config = blobs.read_verified(&manifest.config, "config", source)?;
    let diff_ids = diff_ids(&config, manifest.layers.len(), "the manifest", source)?;
    let layers = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(d, diff_id)| LayerSource {
            member: blob_name(&d.digest),
            blob: Some((d.digest, d.size)),
            diff_id,
        })
        .collect();
    Ok(Resolved {
        config,
        layers,
        annotations: manifest.annotations,
        source_digest: Some(desc.digest),
        name,
    })
}

/// The config's diffIDs, which must be one per layer the manifest lists.
fn diff_ids(
    config: &[u8],
    layers: usize,
    listed_by: &str,
    source: &str,
) -> Result<Vec<Digest>, ImportError> {
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<Digest>,
    }
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    let c: Config =
        serde_json::from_slice(config).map_err(|e| invalid(source, &format!("config: {e}")))?;
    if c.rootfs.diff_ids.len() != layers {
        return Err(invalid(
            source,
            &format!(
                "{listed_by} lists {layers} layers but the config {} diffIDs",
                c.rootfs.diff_ids.len()
            ),
        ));
    }
    Ok(c.rootfs.diff_ids)
}

fn resolve_docker(
    blobs: &Blobs,
    reference: Option<&str>,
    source: &str,
) -> Result<Resolved, ImportError> {
    let bytes = blobs.read_doc("manifest.json", source)?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(source, &format!("manifest.json: {e}")))?;
    let entry = match reference {
        Some(r) if r.starts_with('@') => r[1..]
            .parse::<usize>()
            .ok()
            .and_then(|i| entries.get(i))
            .ok_or_else(|| invalid(source, &format!("no image {r} in the archive")))?,
        Some(r) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| t == r))
            .ok_or_else(|| invalid(source, &format!("no image named `{r}` in the archive")))?,
        None => match entries.as_slice() {
            [one] => one,
            [] => return Err(invalid(source, "the archive holds no image")),
            _ => {
                return Err(invalid(
                    source,
                    "the archive holds several images; name one with :NAME:TAG or :@N",
                ));
            }
        },
    };
    let config_name = normalize_member(&entry.config);
    let config = blobs.read_doc(&config_name, source)?;
    if let Some(expected) = digest_in_name(&config_name) {
        let actual = Digest::of(&config);
        if actual != expected {
            return Err(ImportError::DigestMismatch {
                source_name: source.to_string(),
                what: "config".into(),
                expected,
                actual,
            });
        }
    }
    let diff_ids = diff_ids(&config, entry.layers.len(), "manifest.json", source)?;
    let layers = entry
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(member, diff_id)| {
            let member = normalize_member(member);
            // Newer `docker save` stores blobs by digest; check those too.
            let blob = member
                .strip_prefix("blobs/sha256/")
                .and_then(|h| format!("sha256:{h}").parse().ok())
                .map(|d| (d, u64::MAX));
            LayerSource {
                member,
                blob,
                diff_id,
            }
        })
        .collect();
    Ok(Resolved {
        config,
        layers,
        annotations: BTreeMap::new(),
        source_digest: None,
        name: entry.repo_tags.iter().flatten().next().cloned(),
    })
}

fn digest_in_name(name: &str) -> Option<Digest> {
    let base = name.strip_prefix("blobs/sha256/").unwrap_or(name);
    let hex = base.strip_suffix(".json").unwrap_or(base);
    format!("sha256:{hex}").parse().ok()
}

// ---- decompressing --------------------------------------------------------

enum Decoder<R: BufRead> {
    Plain(R),
    Gzip(Box<flate2::bufread::MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Decoder<R> {
    fn sniff(mut inner: R) -> io::Result<Self> {
        let head = inner.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(inner)))
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd(zstd::stream::read::Decoder::with_buffer(inner)?)
        } else {
            Self::Plain(inner)
        })
    }

    fn get_ref(&self) -> &R {
        match self {
            Self::Plain(r) => r,
            Self::Gzip(d) => d.get_ref(),
            Self::Zstd(d) => d.get_ref(),
        }
    }

    fn into_inner(self) -> R {
        match self {
            Self::Plain(r) => r,
            Self::Gzip(d) => (*d).into_inner(),
            Self::Zstd(d) => d.finish(),
        }
    }
}

impl<R: BufRead> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(d) => d.read(buf),
            Self::Zstd(d) => d.read(buf),
        }
    }
}

/// What the decompressing thread saw.
struct Fed {
    blob: (Digest, u64),
    diff: (Digest, u64),
}

enum FeedError {
    Io(io::Error),
    Limit(String),
    Stopped,
}

fn feed(
    reader: Box<dyn Read + Send>,
    out: &pipe::Writer,
    options: &ImportOptions,
    read: &std::sync::atomic::AtomicU64,
) -> Result<Fed, FeedError> {
    const BUF: usize = 1 << 20;
    let raw = BufReader::with_capacity(256 * 1024, HashingReader::new(reader));
    let mut decoder = Decoder::sniff(raw).map_err(FeedError::Io)?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    loop {
        let mut buf = out.buffer(BUF);
        buf.resize(BUF, 0);
        let mut filled = 0;
        while filled < BUF {
            match decoder.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FeedError::Io(e)),
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        hasher.update(&buf);
        total += filled as u64;
        if total > options.max_layer_size {
            return Err(FeedError::Limit(format!(
                "expands past {} bytes (--max-layer-size)",
                options.max_layer_size
            )));
        }
        let compressed = decoder.get_ref().get_ref().count().max(1);
        read.store(compressed, std::sync::atomic::Ordering::Relaxed);
        if total > 256 << 20 && total / compressed > options.max_ratio {
            return Err(FeedError::Limit(format!(
                "expands {}:1 ({total} bytes from {compressed}), past the {}:1 limit: a decompression bomb",
                total / compressed,
                options.max_ratio
            )));
        }
        if !out.send(buf) {
            return Err(FeedError::Stopped);
        }
    }
    // Read what the decoder left (trailing bytes of the blob) so the blob
    // digest covers every byte.
    let mut raw = decoder.into_inner();
    io::copy(&mut raw, &mut io::sink()).map_err(FeedError::Io)?;
    let blob = raw.into_inner().finish();
    Ok(Fed {
        blob,
        diff: (crate::digest::from_hasher(hasher), total),
    })
}

impl Images {
    /// Imports an image. Returns it once its layers, documents and index
    /// entry are durable.
    pub fn import(
        &self,
        source: &Source,
        options: &ImportOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Imported, ImportError> {
        let name = source.to_string();
        let (blobs, resolved, label) = match source {
            Source::OciDir { dir, tag } => {
                if !dir.join("index.json").is_file() {
                    return Err(invalid(
                        &name,
                        &format!(
                            "{} is not an OCI image layout (no index.json)",
                            dir.display()
                        ),
                    ));
                }
                let blobs = Blobs::Dir(dir.clone());
                let r = resolve_oci(&blobs, tag.as_deref(), &name)?;
                (blobs, r, tag.clone())
            }
            Source::OciArchive { file, tag } => {
                let blobs = Blobs::tar(file, &name)?;
                let r = resolve_oci(&blobs, tag.as_deref(), &name)?;
                (blobs, r, tag.clone())
            }
            Source::DockerArchive { file, reference } => {
                let blobs = Blobs::tar(file, &name)?;
                let r = resolve_docker(&blobs, reference.as_deref(), &name)?;
                (blobs, r, None)
            }
        };
        let mut opened = Vec::new();
        for (i, l) in resolved.layers.iter().enumerate() {
            let (reader, len) = blobs.open(&l.member, &name)?;
            if let Some((_, size)) = l.blob
                && size != u64::MAX
                && size != len
            {
                return Err(ImportError::SizeMismatch {
                    source_name: name.clone(),
                    what: format!("layer {} ({})", i + 1, l.diff_id),
                    expected: size,
                    actual: len,
                });
            }
            opened.push((reader, len));
        }
        let total: u64 = opened.iter().map(|(_, len)| len).sum();
        let mut done_before = 0;
        let mut layers: Vec<(Layer, bool)> = Vec::new();
        let mut new_layers = 0;
        let mut new_bytes = 0;
        let release = |layers: &[(Layer, bool)]| {
            for (l, pinned) in layers {
                if *pinned {
                    let _ = self.chunks().unpin(&l.blob);
                }
            }
        };
        for (i, ((reader, len), l)) in opened.into_iter().zip(&resolved.layers).enumerate() {
            let what = format!(
                "layer {} of {} ({})",
                i + 1,
                resolved.layers.len(),
                l.diff_id
            );
            let mut report = |n: u64| {
                progress(Progress {
                    done: done_before + n.min(len),
                    total,
                })
            };
            let result = self.ingest_layer(reader, l, &what, &name, options, &mut report);
            match result {
                Ok((layer, pinned, added)) => {
                    if pinned {
                        new_layers += 1;
                    }
                    new_bytes += added;
                    layers.push((layer, pinned));
                }
                Err(e) => {
                    release(&layers);
                    return Err(e);
                }
            }
            done_before += len;
            progress(Progress {
                done: done_before,
                total,
            });
        }
        let plain: Vec<Layer> = layers.iter().map(|(l, _)| l.clone()).collect();
        let manifest = ManifestOut::new(&resolved.config, &plain, resolved.annotations).to_bytes();
        let tags = if options.tags.is_empty() {
            resolved
                .name
                .or(label)
                .filter(|t| crate::store::check_tag(t).is_ok())
                .into_iter()
                .collect()
        } else {
            options.tags.clone()
        };
        let committed = self.commit(NewImage {
            manifest,
            config: resolved.config,
            layers: layers.clone(),
            source: name,
            source_digest: resolved.source_digest,
            tags,
        });
        match committed {
            Ok(image) => Ok(Imported {
                image,
                new_layers,
                new_bytes,
            }),
            Err(e) => {
                release(&layers);
                Err(e.into())
            }
        }
    }

    /// Stores one layer (or finds it stored), checking both digests.
    /// Returns the layer, whether this call pinned it, and bytes added.
    fn ingest_layer(
        &self,
        reader: Box<dyn Read + Send>,
        l: &LayerSource,
        what: &str,
        source: &str,
        options: &ImportOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Layer, bool, u64), ImportError> {
        let check_blob = |actual: (Digest, u64)| -> Result<(), ImportError> {
            if let Some((expected, size)) = l.blob {
                if actual.0 != expected {
                    return Err(ImportError::DigestMismatch {
                        source_name: source.to_string(),
                        what: what.to_string(),
                        expected,
                        actual: actual.0,
                    });
                }
                if size != u64::MAX && actual.1 != size {
                    return Err(ImportError::SizeMismatch {
                        source_name: source.to_string(),
                        what: what.to_string(),
                        expected: size,
                        actual: actual.1,
                    });
                }
            }
            Ok(())
        };
        let io_err = |e: io::Error| ImportError::Io {
            path: PathBuf::from(format!("{source} {what}")),
            source: e,
        };
        if let Some(known) = self.known_layer(&l.diff_id)? {
            // Stored and verified before: check the blob's own digest (when it
            // has one) and skip decompressing.
            if l.blob.is_some() {
                let mut r = HashingReader::new(reader);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = r.read(&mut buf).map_err(io_err)?;
                    if n == 0 {
                        break;
                    }
                    progress(r.count());
                }
                check_blob(r.finish())?;
            }
            return Ok((known, false, 0));
        }
        let (writer, pipe_reader) = pipe::pipe(4);
        let read = std::sync::atomic::AtomicU64::new(0);
        let (fed, put) = std::thread::scope(|s| {
            let read = &read;
            let feeder = s.spawn(move || {
                let r = feed(reader, &writer, options, read);
                if let Err(FeedError::Io(e)) = &r {
                    writer.fail(io::Error::new(e.kind(), e.to_string()));
                } else if r.is_err() {
                    writer.fail(io::Error::other("layer rejected"));
                }
                r
            });
            let put = self
                .chunks()
                .put_observed(pipe_reader, PutOptions { pin: true }, |_| {
                    progress(read.load(std::sync::atomic::Ordering::Relaxed));
                });
            let fed = feeder.join().unwrap_or(Err(FeedError::Stopped));
            (fed, put)
        });
        let unpin = |put: &Result<utter_chunkstore::Put, utter_chunkstore::Error>| {
            if let Ok(p) = put {
                let _ = self.chunks().unpin(&p.id);
            }
        };
        let fed = match fed {
            Ok(f) => f,
            Err(e) => {
                unpin(&put);
                return Err(match e {
                    FeedError::Io(e) => invalid(source, &format!("{what}: {e}")),
                    FeedError::Limit(reason) => ImportError::Limit {
                        source_name: source.to_string(),
                        what: what.to_string(),
                        reason,
                    },
                    FeedError::Stopped => match put {
                        Err(e) => ImportError::Store(e.into()),
                        Ok(_) => invalid(source, &format!("{what}: reading stopped")),
                    },
                });
            }
        };
        let put = put.map_err(|e| ImportError::Store(e.into()))?;
        progress(fed.blob.1);
        let checked = check_blob(fed.blob).and_then(|()| {
            if fed.diff.0 != l.diff_id {
                return Err(ImportError::DigestMismatch {
                    source_name: source.to_string(),
                    what: format!("{what}, uncompressed"),
                    expected: l.diff_id,
                    actual: fed.diff.0,
                });
            }
            Ok(())
        });
        if let Err(e) = checked {
            let _ = self.chunks().unpin(&put.id);
            return Err(e);
        }
        Ok((
            Layer {
                diff_id: l.diff_id,
                size: fed.diff.1,
                blob: put.id,
            },
            true,
            put.new_bytes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_like_skopeo() {
        let s: Source = "oci:/tmp/layout:v1".parse().expect("parses");
        assert_eq!(
            s,
            Source::OciDir {
                dir: "/tmp/layout".into(),
                tag: Some("v1".into())
            }
        );
        let s: Source = "docker-archive:img.tar:busybox:latest"
            .parse()
            .expect("parses");
        assert_eq!(
            s,
            Source::DockerArchive {
                file: "img.tar".into(),
                reference: Some("busybox:latest".into())
            }
        );
        assert_eq!(s.to_string(), "docker-archive:img.tar:busybox:latest");
        for bad in ["", "oci:", "docker://busybox", "dir:/x", "/tmp/layout"] {
            assert!(bad.parse::<Source>().is_err(), "{bad}");
        }
    }
}
