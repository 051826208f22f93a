//! A blocking client of one Docker daemon.
//!
//! bollard is async; criu-rs, its transports and the CLI are blocking. A
//! [`DockerClient`] owns a current-thread tokio runtime and runs each call
//! to completion on it, so callers need no runtime of their own. Calling
//! it from inside another tokio runtime is refused with an error (tokio
//! would panic): use `spawn_blocking` there.

use std::path::PathBuf;

use bollard::container::CreateCheckpointOptions;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerUpdateBody, ImageInspect,
    RestartPolicy, SystemInfo,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, PushImageOptions, RemoveContainerOptions,
    RemoveImageOptions, TagImageOptions,
};
use bollard::Docker;
use futures_util::TryStreamExt;
use tokio::runtime::Runtime;

use crate::error::{Error, Result};
use crate::raw::{self, Endpoint};

/// Where Docker listens when neither `--docker-host` nor `DOCKER_HOST`
/// says otherwise.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Seconds a single API call may take (a checkpoint of a large container
/// is one call).
const TIMEOUT_S: u64 = 600;

/// A connection to one Docker daemon (no request is made until a method
/// is called; [`DockerClient::connect`] negotiates the API version).
pub struct DockerClient {
    rt: Runtime,
    docker: Docker,
    endpoint: Endpoint,
    uri: String,
}

impl std::fmt::Debug for DockerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerClient")
            .field("uri", &self.uri)
            .finish()
    }
}

/// Fails, instead of letting tokio panic, when called on a runtime thread.
fn outside_runtime() -> Result<()> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::Usage(
            "criu-docker blocks: call it outside async code (tokio::task::spawn_blocking)".into(),
        ));
    }
    Ok(())
}

impl DockerClient {
    /// Connects to the daemon at `host` (`unix:///PATH` or
    /// `tcp://HOST:PORT`), or, when `None`, at `DOCKER_HOST`, or at
    /// [`DEFAULT_HOST`]; agrees on an API version with it (Docker 20.10
    /// speaks 1.41 and refuses newer clients).
    pub fn connect(host: Option<&str>) -> Result<DockerClient> {
        outside_runtime()?;
        let uri = match host {
            Some(h) => h.to_string(),
            None => std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_HOST.into()),
        };
        let endpoint = Endpoint::parse(&uri).map_err(Error::Usage)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("starting the runtime for the Docker API"))?;
        let docker = rt
            .block_on(async {
                let d = match &endpoint {
                    Endpoint::Unix(p) => Docker::connect_with_unix(
                        &p.to_string_lossy(),
                        TIMEOUT_S,
                        bollard::API_DEFAULT_VERSION,
                    ),
                    Endpoint::Tcp(a) => {
                        Docker::connect_with_http(a, TIMEOUT_S, bollard::API_DEFAULT_VERSION)
                    }
                }?;
                d.negotiate_version().await
            })
            .map_err(Error::docker(format!(
                "connecting to the Docker daemon at {uri} (is dockerd running there? \
                 --docker-host or DOCKER_HOST names another)"
            )))?;
        Ok(DockerClient {
            rt,
            docker,
            endpoint,
            uri,
        })
    }

    /// The URI this client talks to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    fn block<T>(
        &self,
        what: impl Into<String>,
        f: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
    ) -> Result<T> {
        outside_runtime()?;
        self.rt.block_on(f).map_err(Error::docker(what))
    }

    /// The daemon's `docker info`.
    pub fn info(&self) -> Result<SystemInfo> {
        self.block("docker info", self.docker.info())
    }

    /// The daemon's data root (`--data-root`, `DockerRootDir` in `info`).
    pub fn data_root(&self) -> Result<PathBuf> {
        let info = self.info()?;
        info.docker_root_dir
            .map(PathBuf::from)
            .ok_or_else(|| Error::Usage(format!("the daemon at {} reports no data root", self.uri)))
    }

    /// `docker inspect CONTAINER` (by name or ID).
    pub fn inspect(&self, container: &str) -> Result<ContainerInspectResponse> {
        self.block(
            format!("inspecting the container {container}"),
            self.docker.inspect_container(container, None),
        )
    }

    /// `docker image inspect IMAGE` (by name or ID).
    pub fn image(&self, image: &str) -> Result<ImageInspect> {
        self.block(
            format!("inspecting the image {image}"),
            self.docker.inspect_image(image),
        )
    }

    /// `docker tag IMAGE REPO:TAG`.
    pub fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<()> {
        let options = TagImageOptions {
            repo: Some(repo.into()),
            tag: Some(tag.into()),
        };
        self.block(
            format!("docker tag {image} {repo}:{tag}"),
            self.docker.tag_image(image, Some(options)),
        )
    }

    /// `docker rmi REPO:TAG` of a tag only (the image stays while another
    /// name or a container uses it).
    pub fn untag(&self, reference: &str) -> Result<()> {
        let options = RemoveImageOptions {
            noprune: true,
            ..Default::default()
        };
        self.block(
            format!("docker rmi {reference}"),
            self.docker.remove_image(reference, Some(options), None),
        )
        .map(drop)
    }

    /// `docker push REPO:TAG` (no credentials: the registry must accept
    /// anonymous pushes); the pushed manifest's digest, when the daemon
    /// reported it.
    pub fn push(&self, repo: &str, tag: &str) -> Result<Option<String>> {
        let options = PushImageOptions {
            tag: Some(tag.into()),
            ..Default::default()
        };
        let progress: Vec<_> = self.block(
            format!("docker push {repo}:{tag}"),
            self.docker
                .push_image(repo, Some(options), None)
                .try_collect(),
        )?;
        // The last status reads "TAG: digest: sha256:HEX size: N".
        Ok(progress
            .iter()
            .filter_map(|p| p.status.as_deref())
            .find_map(|s| s.split("digest: ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string))
    }

    /// `docker pull REFERENCE` (`repo:tag` or `repo@sha256:...`).
    pub fn pull(&self, reference: &str) -> Result<()> {
        let options = CreateImageOptions {
            from_image: Some(reference.into()),
            ..Default::default()
        };
        self.block(
            format!("docker pull {reference}"),
            self.docker
                .create_image(Some(options), None, None)
                .try_collect::<Vec<_>>(),
        )
        .map(drop)
    }

    /// Whether the volume `name` exists.
    pub fn volume_exists(&self, name: &str) -> Result<bool> {
        found(self.block(
            format!("inspecting the volume {name}"),
            self.docker.inspect_volume(name),
        ))
    }

    /// Whether the network `name` exists.
    pub fn network_exists(&self, name: &str) -> Result<bool> {
        found(self.block(
            format!("inspecting the network {name}"),
            self.docker.inspect_network(name, None),
        ))
    }

    /// Whether a container of that name or ID exists.
    pub fn container_exists(&self, name: &str) -> Result<bool> {
        found(self.inspect(name))
    }

    /// `docker create --name NAME` with `body`; returns the new ID.
    pub fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String> {
        let options = CreateContainerOptions {
            name: Some(name.into()),
            ..Default::default()
        };
        let made = self.block(
            format!("creating the container {name}"),
            self.docker.create_container(Some(options), body),
        )?;
        Ok(made.id)
    }

    /// `docker start CONTAINER`.
    pub fn start(&self, id: &str) -> Result<()> {
        self.block(
            format!("starting the container {id}"),
            self.docker.start_container(id, None),
        )
    }

    /// `docker checkpoint create CONTAINER NAME`, into the container's own
    /// checkpoints folder; `exit` stops the container (Docker's default),
    /// otherwise it runs on (`--leave-running`).
    pub fn checkpoint(&self, id: &str, name: &str, exit: bool) -> Result<()> {
        let options = CreateCheckpointOptions {
            checkpoint_id: name.into(),
            checkpoint_dir: None,
            exit,
        };
        self.block(
            format!("docker checkpoint create {id} {name}"),
            self.docker.create_checkpoint(id, options),
        )
    }

    /// `docker start --checkpoint=NAME CONTAINER`: the checkpoint must be
    /// in the container's own folder (Docker 20.10 refuses
    /// `--checkpoint-dir` on start).
    pub fn start_from_checkpoint(&self, id: &str, name: &str) -> Result<()> {
        outside_runtime()?;
        let version = self.docker.client_version().to_string();
        let path = format!("/containers/{id}/start?checkpoint={name}");
        self.rt
            .block_on(raw::post(&self.endpoint, &version, &path))
            .map_err(|message| Error::Api {
                what: format!("docker start --checkpoint={name} {id}"),
                message,
            })
    }

    /// `docker update --restart POLICY CONTAINER`.
    pub fn set_restart_policy(&self, id: &str, policy: RestartPolicy) -> Result<()> {
        let body = ContainerUpdateBody {
            restart_policy: Some(policy),
            ..Default::default()
        };
        self.block(
            format!("setting the restart policy of {id}"),
            self.docker.update_container(id, body),
        )
    }

    /// `docker rm --force CONTAINER`.
    pub fn remove(&self, id: &str) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        self.block(
            format!("removing the container {id}"),
            self.docker.remove_container(id, Some(options)),
        )
    }

    /// Whether the container runs.
    pub fn running(&self, id: &str) -> Result<bool> {
        let c = self.inspect(id)?;
        Ok(c.state.and_then(|s| s.running).unwrap_or(false))
    }
}

/// `Ok(true)` for an answer, `Ok(false)` for a 404.
fn found<T>(r: Result<T>) -> Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}
