//! `utter dapp deploy`, `upgrade`, `remove` and `ls`: dapps on a running
//! chain, by transaction (`chain deploy|upgrade|remove`, see
//! `utter_executor`'s deploy module), with the image uploaded to the node
//! first when it lacks it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use utter_client::Client;
use utter_client::api::TxState;
use utter_formats::Status;
use utter_formats::config::{
    CHAIN_DAPP, DEPLOY_ACTION, DeployArgs as DeployTx, REMOVE_ACTION, RemoveArgs as RemoveTx,
    UPGRADE_ACTION, UpgradeArgs as UpgradeTx, is_image_digest,
};
use utter_formats::tx::Request;
use utter_images::{Image, ImportOptions, Source};
use utter_node::Home;

use super::project::{PROJECT_FILE, Project, Scratch};
use crate::ui::Progress;

/// Where the node is and who signs (every subcommand here).
#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The signer's OpenSSH ed25519 private key [default: the node key]
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The node's API [default: the node running on this data dir, else
    /// http://127.0.0.1:7447]
    #[arg(long, value_name = "URL", env = "UTTER_NODE")]
    node: Option<String>,
    /// Return once the node holds the transaction, without waiting for its block
    #[arg(long)]
    no_wait: bool,
    /// How long to wait for the block, seconds
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    timeout: u64,
    /// Print one JSON object
    #[arg(long)]
    json: bool,
}

/// Arguments of `utter dapp deploy`.
#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The dapp's name on the chain
    name: String,
    /// The image: a project directory (built as `utter dapp test` builds
    /// it), an archive (oci:DIR, oci-archive:FILE, docker-archive:FILE), or
    /// the sha256:… digest of an image the node has
    image: String,
    /// A key that may upgrade or remove the dapp (repeatable) [default:
    /// the signer]
    #[arg(long = "owner", value_name = "KEY")]
    owners: Vec<String>,
    /// The dapp's permission rules: a TOML file written into its dapp.toml
    #[arg(long, value_name = "FILE")]
    permissions: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

/// Arguments of `utter dapp upgrade`.
#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// The deployed dapp
    name: String,
    /// The new image, spelled as for `utter dapp deploy`
    image: String,
    #[command(flatten)]
    node: NodeArgs,
}

/// Arguments of `utter dapp remove`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The deployed dapp
    name: String,
    #[command(flatten)]
    node: NodeArgs,
}

/// Arguments of `utter dapp ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// The node's API [default: the node running on this data dir]
    #[arg(long, value_name = "URL", env = "UTTER_NODE")]
    node: Option<String>,
    /// One JSON object instead of a table
    #[arg(long)]
    json: bool,
}

/// Reads the image `spec` names into a scratch store: a project is built,
/// an archive imported.
fn local_image(spec: &str, scratch: &Scratch, quiet: bool) -> Result<Image> {
    let dir = Path::new(spec);
    if dir.join(PROJECT_FILE).is_file() {
        return Project::open(dir)?.build_image(&scratch.images, quiet);
    }
    let source: Source = spec.parse().map_err(|e| {
        anyhow::anyhow!(
            "{spec} is not a dapp project (no {PROJECT_FILE}), an image archive \
             (oci:DIR, oci-archive:FILE, docker-archive:FILE) or an image digest: {e}"
        )
    })?;
    Ok(scratch
        .images
        .import(&source, &ImportOptions::default(), &mut |_| {})
        .with_context(|| format!("cannot read the image {spec}"))?
        .image)
}

/// Writes `image` as an OCI archive (a tar of its OCI layout) to `out`.
fn archive(scratch: &Scratch, image: &Image, out: &Path) -> Result<u64> {
    use utter_images::tar::{Header, Kind, Writer};
    let layout = tempfile::tempdir()?;
    scratch
        .images
        .export(image, layout.path(), None, &mut |_| {})
        .context("cannot export the image for upload")?;
    let file = std::fs::File::create(out)?;
    let mut tar = Writer::new(std::io::BufWriter::new(file));
    let mut files = Vec::new();
    for rel in ["oci-layout", "index.json"] {
        files.push(rel.to_string());
    }
    let mut blobs: Vec<String> = std::fs::read_dir(layout.path().join("blobs/sha256"))?
        .flatten()
        .map(|e| format!("blobs/sha256/{}", e.file_name().to_string_lossy()))
        .collect();
    blobs.sort();
    for dir in ["blobs/", "blobs/sha256/"] {
        tar.append(
            &Header {
                kind: Kind::Dir,
                mode: 0o755,
                ..Header::file(dir.as_bytes())
            },
            None,
        )?;
    }
    files.extend(blobs);
    let mut total = 0;
    for rel in files {
        let path = layout.path().join(&rel);
        let size = std::fs::metadata(&path)?.len();
        total += size;
        let mut f = std::fs::File::open(&path)?;
        tar.append(
            &Header {
                size,
                ..Header::file(rel.as_bytes())
            },
            Some(&mut f),
        )?;
    }
    tar.finish()?;
    Ok(total)
}

/// Counts bytes read into a progress bar.
struct Counting<'a, R> {
    inner: R,
    read: u64,
    progress: &'a mut Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.progress.set(self.read);
        Ok(n)
    }
}

/// The digest of the image `spec` names, on the node: uploaded first when
/// the node does not have it.
pub fn image_on_node(client: &Client, spec: &str, quiet: bool) -> Result<String> {
    if is_image_digest(spec) {
        return match client.image(spec)? {
            Some(info) => Ok(info.digest),
            None => bail!(
                "the node has no image {spec}; give the project directory or an image archive \
                 instead, and it is uploaded"
            ),
        };
    }
    let scratch = Scratch::new()?;
    let image = local_image(spec, &scratch, quiet)?;
    let digest = image.id.to_string();
    if client.image(&digest)?.is_some() {
        if !quiet {
            eprintln!("the node has image {digest} already");
        }
        return Ok(digest);
    }
    let file = tempfile::NamedTempFile::new()?;
    let size = archive(&scratch, &image, file.path())?;
    let mut progress = Progress::bytes("uploading the image", Some(size), quiet);
    let mut reader = Counting {
        inner: std::fs::File::open(file.path())?,
        read: 0,
        progress: &mut progress,
    };
    let info = client.upload_image(&mut reader)?;
    progress.finish();
    if info.digest != digest {
        bail!(
            "the node stored the upload as {} but it was {digest}; is the node another version of utter?",
            info.digest
        );
    }
    if !quiet {
        eprintln!(
            "uploaded {digest} ({} new on the node)",
            crate::ui::human(info.new_bytes)
        );
    }
    Ok(digest)
}

/// Signs and sends one `chain` transaction; waits for its block unless
/// told not to; prints its fate. Exit 1 when it was refused or rejected.
fn send(
    home: &Home,
    args: &NodeArgs,
    action: &str,
    tx: serde_json::Value,
    what: &str,
) -> Result<u8> {
    let key = home.load_key(args.key.as_deref())?;
    let client = home.client(args.node.as_deref());
    let sent = client.sign_and_submit(
        &key,
        vec![Request {
            dapp: CHAIN_DAPP.into(),
            action: action.into(),
            args: tx,
        }],
    )?;
    let (_, mut state) = sent
        .into_iter()
        .next()
        .context("the node answered no state for the transaction")?;
    if !args.no_wait && matches!(state, TxState::Pending { .. }) {
        let mut progress = Progress::items("waiting for the block", 1, args.json);
        let done = client.wait_all(&[state.id()], Duration::from_secs(args.timeout), |n| {
            progress.set(n as u64)
        })?;
        progress.finish();
        state = done.into_iter().next().unwrap_or(state);
    }
    let failed = match &state {
        TxState::Refused { .. } => true,
        TxState::Committed { result, .. } => result.status == Status::Rejected,
        TxState::Pending { .. } => false,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        match &state {
            TxState::Committed { result, height, .. } if result.status == Status::Accepted => {
                println!("{what} in block {height}")
            }
            TxState::Committed { result, .. } => println!(
                "rejected: {}",
                result.reason.as_deref().unwrap_or("no reason given")
            ),
            TxState::Refused { error, .. } => println!("refused: {error}"),
            TxState::Pending { id } => println!("sent as {}; not in a block yet", id.short()),
        }
    }
    Ok(u8::from(failed))
}

/// `utter dapp deploy`.
pub fn deploy(home: &Home, args: DeployArgs) -> Result<u8> {
    utter_formats::config::check_name("dapp", &args.name)?;
    let permissions = match &args.permissions {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{} is not a TOML table", path.display()))?
        }
        None => toml::Table::new(),
    };
    let client = home.client(args.node.node.as_deref());
    let image = image_on_node(&client, &args.image, args.node.json)?;
    let tx = DeployTx {
        name: args.name.clone(),
        image,
        owners: args.owners,
        permissions,
    };
    send(
        home,
        &args.node,
        DEPLOY_ACTION,
        serde_json::to_value(tx)?,
        &format!("deployed {}", args.name),
    )
}

/// `utter dapp upgrade`.
pub fn upgrade(home: &Home, args: UpgradeArgs) -> Result<u8> {
    let client = home.client(args.node.node.as_deref());
    let image = image_on_node(&client, &args.image, args.node.json)?;
    let tx = UpgradeTx {
        name: args.name.clone(),
        image: image.clone(),
    };
    send(
        home,
        &args.node,
        UPGRADE_ACTION,
        serde_json::to_value(tx)?,
        &format!("upgraded {} to {image}", args.name),
    )
}

/// `utter dapp remove`.
pub fn remove(home: &Home, args: RemoveArgs) -> Result<u8> {
    let tx = RemoveTx {
        name: args.name.clone(),
    };
    send(
        home,
        &args.node,
        REMOVE_ACTION,
        serde_json::to_value(tx)?,
        &format!("removed {}", args.name),
    )
}

/// `utter dapp ls`.
pub fn ls(home: &Home, args: LsArgs) -> Result<u8> {
    let client = home.client(args.node.as_deref());
    let dapps = client.dapps()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&dapps)?);
        return Ok(0);
    }
    println!(
        "{:<16} {:<19} {:>8} {:>8}  OWNERS",
        "NAME", "IMAGE", "DEPLOYED", "UPGRADED"
    );
    for d in &dapps.dapps {
        let owners = if d.owners.is_empty() {
            "(genesis)".to_string()
        } else {
            d.owners
                .iter()
                .map(|o| {
                    let b = o.rsplit(' ').next().unwrap_or(o);
                    format!("…{}", &b[b.len().saturating_sub(8)..])
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<16} {:<19} {:>8} {:>8}  {owners}",
            d.name,
            &d.image[..d.image.len().min(19)],
            d.deployed_at,
            d.upgraded_at
                .map_or_else(|| "-".to_string(), |h| h.to_string()),
        );
    }
    println!("at block {} (height {})", dapps.at.short(), dapps.height);
    Ok(0)
}
