//! `utter run`: a one-off command in a fresh container of an image (no
//! network, read-only image, limits), stdio attached, exit code passed on.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use utter_node::Home;
use utter_runtime::{Job, Outcome, Sandbox, Stdio};

use crate::container::{LimitArgs, exit_code, finished_json, image_rootfs, open_runtime};

/// Arguments of `utter run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The image: a tag, sha256:… digest, or unique digest prefix
    image: String,
    /// The command to run instead of the image's entrypoint and cmd
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Capture stdout and stderr and print one JSON object (outcome,
    /// output, time) instead of attaching the terminal
    #[arg(long)]
    json: bool,
}

/// `utter run`.
pub fn run(home: &Home, args: RunArgs) -> Result<u8> {
    let runtime = open_runtime(home)?;
    let (process, rootfs) = image_rootfs(home, &args.image, args.json)?;
    let command = if args.command.is_empty() {
        process.default_args.clone()
    } else {
        args.command.clone()
    };
    if command.is_empty() {
        bail!(
            "{} has no entrypoint or cmd: give the command after --, e.g. `utter run {} -- /bin/sh`",
            args.image,
            args.image
        );
    }
    let job = Job {
        rootfs,
        args: command,
        env: process.env,
        cwd: process.cwd,
        hostname: "utter".into(),
        mounts: Vec::new(),
        limits: args
            .limits
            .limits(Duration::from_secs(100 * 365 * 24 * 3600))?,
    };
    let stdio = if args.json {
        Stdio::Capture
    } else {
        Stdio::Inherit
    };
    let finished = runtime.run(&job, stdio)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&finished_json(&finished))?
        );
    } else if !matches!(finished.outcome, Outcome::Exited(_)) {
        eprintln!("utter: the container {}", finished.outcome);
    }
    Ok(exit_code(&finished.outcome))
}
