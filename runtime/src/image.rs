//! What an image's config says about running it.

use oci_spec::image::ImageConfiguration;

use crate::spec::DEFAULT_PATH;

/// The process an image's config describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProcess {
    /// `Entrypoint`, or `Cmd` when there is no entrypoint.
    pub command: Vec<String>,
    /// `Entrypoint` followed by `Cmd`: what runs when nothing is given.
    pub default_args: Vec<String>,
    /// `Env`, with a default `PATH` when it sets none.
    pub env: Vec<String>,
    /// `WorkingDir`, `/` by default.
    pub cwd: String,
}

impl ImageProcess {
    /// Reads `config`.
    pub fn from_config(config: &ImageConfiguration) -> Self {
        let c = config.config().as_ref();
        let entrypoint = c.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
        let cmd = c.and_then(|c| c.cmd().clone()).unwrap_or_default();
        let mut env = c.and_then(|c| c.env().clone()).unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let cwd = c
            .and_then(|c| c.working_dir().clone())
            .filter(|d| d.starts_with('/'))
            .unwrap_or_else(|| "/".to_string());
        let command = if entrypoint.is_empty() {
            cmd.clone()
        } else {
            entrypoint.clone()
        };
        let default_args = entrypoint.into_iter().chain(cmd).collect();
        Self {
            command,
            default_args,
            env,
            cwd,
        }
    }
}
