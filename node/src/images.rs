//! The node's image store as the executor sees it: a digest to an unpacked
//! rootfs and the process to start.

use std::collections::HashMap;
use std::path::PathBuf;

use utter_executor::ImageError;
use utter_images::Images;
use utter_runtime::ImageProcess;

/// The image store, with what was found cached per digest (a digest names
/// the same rootfs for ever; a cached one is used while it is still on
/// disk).
pub struct NodeImages {
    images: Images,
    found: HashMap<String, (PathBuf, ImageProcess)>,
}

impl NodeImages {
    /// Over `images`; rootfs are unpacked on first use.
    pub fn new(images: Images) -> Self {
        Self {
            images,
            found: HashMap::new(),
        }
    }

    /// The image store.
    pub fn store(&self) -> &Images {
        &self.images
    }
}

impl utter_executor::Images for NodeImages {
    fn rootfs(&mut self, digest: &str) -> Result<(PathBuf, ImageProcess), ImageError> {
        if let Some(found) = self.found.get(digest)
            && found.0.is_dir()
        {
            return Ok(found.clone());
        }
        let image = self
            .images
            .get(digest)
            .map_err(|e| ImageError::Missing(Box::new(e)))?;
        let rootfs = self
            .images
            .rootfs(&image)
            .map_err(|e| ImageError::Damaged(Box::new(e)))?;
        let config = self
            .images
            .config(&image)
            .map_err(|e| ImageError::Damaged(Box::new(e)))?;
        let process = ImageProcess::from_config(&config);
        if process.command.is_empty() {
            return Err(ImageError::NoEntrypoint);
        }
        self.found
            .insert(digest.to_string(), (rootfs.clone(), process.clone()));
        Ok((rootfs, process))
    }
}
