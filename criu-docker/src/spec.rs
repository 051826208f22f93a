//! What the destination needs to know to create the same container: read
//! from the source daemon's `docker inspect`, sent as JSON.

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, RestartPolicy, RestartPolicyNameEnum,
};
use serde::{Deserialize, Serialize};

use crate::client::DockerClient;
use crate::error::{Error, Result};

/// One mount of the container, as the destination must provide it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Mount {
    /// `bind`, `volume`, `tmpfs`, ...
    pub kind: String,
    /// The volume's name (volumes).
    pub name: Option<String>,
    /// The path on the host (binds).
    pub source: Option<String>,
    /// The path in the container.
    pub destination: String,
}

/// A running container's identity and configuration, as the source
/// daemon reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContainerSpec {
    /// Its name, without Docker's leading `/`.
    pub name: String,
    /// Its ID on the source host.
    pub id: String,
    /// The image as the user named it (`redis:7`), from its configuration.
    pub image: String,
    /// The image's ID on the source host (`sha256:...`).
    pub image_id: String,
    /// The diff IDs of the image's layers: the same files have the same
    /// layers on any host, even when the image IDs differ (an image
    /// imported twice has two IDs).
    pub layers: Vec<String>,
    /// Its mounts.
    pub mounts: Vec<Mount>,
    /// Its network mode (`host`, `none`, `bridge`, a network's name...).
    pub network_mode: String,
    /// Whether it is running (and not paused).
    pub running: bool,
    /// The whole creation request (`Config` with its `HostConfig`): the
    /// command, entry point, environment, labels, working directory,
    /// user, restart policy, volumes, network mode, limits...
    pub create: serde_json::Value,
}

impl ContainerSpec {
    /// Reads `container` (name or ID) and its image from `docker`.
    pub fn inspect(docker: &DockerClient, container: &str) -> Result<ContainerSpec> {
        let c = docker.inspect(container)?;
        let image_id = c.image.clone().unwrap_or_default();
        let layers = docker
            .image(&image_id)?
            .root_fs
            .and_then(|r| r.layers)
            .unwrap_or_default();
        Self::from_inspect(c, layers)
    }

    fn from_inspect(c: ContainerInspectResponse, layers: Vec<String>) -> Result<ContainerSpec> {
        let config = c.config.clone().unwrap_or_default();
        let host_config = c.host_config.clone().unwrap_or_default();
        let state = c.state.clone().unwrap_or_default();
        let mut create = serde_json::to_value(&config)
            .map_err(|e| Error::Protocol(format!("encoding the container's configuration: {e}")))?;
        create["HostConfig"] = serde_json::to_value(&host_config).map_err(|e| {
            Error::Protocol(format!("encoding the container's host configuration: {e}"))
        })?;
        let mounts = c
            .mounts
            .unwrap_or_default()
            .into_iter()
            .map(|m| Mount {
                kind: m.typ.map(|t| t.to_string()).unwrap_or_default(),
                name: m.name,
                source: m.source,
                destination: m.destination.unwrap_or_default(),
            })
            .collect();
        Ok(ContainerSpec {
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            id: c.id.unwrap_or_default(),
            image: config.image.unwrap_or_default(),
            image_id: c.image.unwrap_or_default(),
            layers,
            mounts,
            network_mode: host_config.network_mode.unwrap_or_default(),
            running: state.running == Some(true) && state.paused != Some(true),
            create,
        })
    }

    /// The container's restart policy, when it has one that restarts it
    /// (`always`, `unless-stopped`, `on-failure`).
    pub fn restart_policy(&self) -> Option<RestartPolicy> {
        let policy: RestartPolicy =
            serde_json::from_value(self.create["HostConfig"]["RestartPolicy"].clone()).ok()?;
        match policy.name {
            None | Some(RestartPolicyNameEnum::EMPTY) | Some(RestartPolicyNameEnum::NO) => None,
            Some(_) => Some(policy),
        }
    }

    /// The creation request for the destination, naming the image as
    /// `image` (its reference there).
    pub fn create_body(&self, image: &str) -> Result<ContainerCreateBody> {
        let mut body: ContainerCreateBody = serde_json::from_value(self.create.clone())
            .map_err(|e| Error::Protocol(format!("decoding the container's configuration: {e}")))?;
        body.image = Some(image.to_string());
        Ok(body)
    }
}
