//! The Docker API calls the engine makes, through bollard on one daemon's
//! socket, each run to completion on a small runtime of its own (the rest
//! of testkit is synchronous).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bollard::body_full;
use bollard::container::{CreateCheckpointOptions, LogOutput};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions,
};
use bollard::{ClientVersion, Docker};
use futures_util::TryStreamExt;
use tokio::runtime::Runtime;

use crate::container::BoxError;

/// Docker Engine 20.10 speaks API 1.41 and refuses newer clients.
const API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// One line of a container's log, with Docker's own timestamp.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// When the daemon received the line.
    pub at: SystemTime,
    /// The line, without its timestamp.
    pub text: String,
}

/// A container's state, as the daemon reports it.
#[derive(Debug, Clone, Copy)]
pub struct State {
    /// Whether it runs.
    pub running: bool,
    /// Its init's pid on the machine (0 when not running).
    pub pid: i32,
}

/// A client of one daemon.
pub struct Api {
    rt: Runtime,
    docker: Docker,
    socket: PathBuf,
}

impl Api {
    /// A client of the daemon listening on `socket` (no request made yet).
    pub fn new(socket: &Path) -> Result<Api, BoxError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = socket.to_str().ok_or("the socket path is not UTF-8")?;
        let docker = rt.block_on(async { Docker::connect_with_unix(path, 120, &API) })?;
        Ok(Api {
            rt,
            docker,
            socket: socket.to_path_buf(),
        })
    }

    /// The daemon's version, which also proves that it answers.
    pub fn version(&self) -> Result<String, BoxError> {
        let v = self.rt.block_on(self.docker.version())?;
        Ok(v.version.unwrap_or_default())
    }

    /// Imports a root filesystem tar as the image `repo:tag` (what
    /// `docker import` does; nothing is pulled).
    pub fn import_image(&self, tar: Vec<u8>, repo: &str, tag: &str) -> Result<(), BoxError> {
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(repo.into()),
            tag: Some(tag.into()),
            ..Default::default()
        };
        let stream = self
            .docker
            .create_image(Some(options), Some(body_full(tar.into())), None);
        self.rt
            .block_on(stream.try_collect::<Vec<_>>())
            .map_err(|e| format!("importing the image {repo}:{tag}: {e}"))?;
        Ok(())
    }

    /// Creates (does not start) a container named `name` running `cmd` in
    /// `image`, with no network.
    pub fn create(&self, name: &str, image: &str, cmd: &[&str]) -> Result<String, BoxError> {
        let body = ContainerCreateBody {
            image: Some(image.into()),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.into()),
            ..Default::default()
        };
        let made = self
            .rt
            .block_on(self.docker.create_container(Some(options), body))
            .map_err(|e| format!("creating the container {name}: {e}"))?;
        Ok(made.id)
    }

    /// Starts a created container.
    pub fn start(&self, id: &str) -> Result<(), BoxError> {
        self.rt
            .block_on(self.docker.start_container(id, None))
            .map_err(|e| format!("starting the container {id}: {e}").into())
    }

    /// Checkpoints a running container into its own checkpoints folder
    /// under the data root; the container stops (Docker's default).
    pub fn checkpoint(&self, id: &str, name: &str) -> Result<(), BoxError> {
        let options = CreateCheckpointOptions {
            checkpoint_id: name.into(),
            checkpoint_dir: None,
            exit: true,
        };
        self.rt
            .block_on(self.docker.create_checkpoint(id, options))
            .map_err(|e| format!("docker checkpoint create {name}: {e}").into())
    }

    /// Starts a created or exited container from the checkpoint `name` in
    /// its own checkpoints folder (`docker start --checkpoint`).
    pub fn start_from_checkpoint(&self, id: &str, name: &str) -> Result<(), BoxError> {
        let path = format!("/containers/{id}/start?checkpoint={name}");
        self.rt
            .block_on(super::raw::post(&self.socket, &path))
            .map_err(|e| format!("docker start --checkpoint {name}: {e}").into())
    }

    /// The container's log so far (stdout and stderr), with timestamps.
    pub fn logs(&self, id: &str) -> Result<Vec<LogLine>, BoxError> {
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            timestamps: true,
            ..Default::default()
        };
        let chunks: Vec<LogOutput> = self
            .rt
            .block_on(self.docker.logs(id, Some(options)).try_collect())
            .map_err(|e| format!("reading the log of {id}: {e}"))?;
        let text: String = chunks.iter().map(|c| c.to_string()).collect();
        text.lines().map(parse_line).collect()
    }

    /// Whether the container runs, and its init's pid.
    pub fn state(&self, id: &str) -> Result<State, BoxError> {
        let c = self
            .rt
            .block_on(self.docker.inspect_container(id, None))
            .map_err(|e| format!("inspecting the container {id}: {e}"))?;
        let s = c.state.unwrap_or_default();
        Ok(State {
            running: s.running.unwrap_or(false),
            pid: s.pid.unwrap_or(0) as i32,
        })
    }

    /// Removes the container, running or not.
    pub fn remove(&self, id: &str) -> Result<(), BoxError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        self.rt
            .block_on(self.docker.remove_container(id, Some(options)))
            .map_err(|e| format!("removing the container {id}: {e}").into())
    }

    /// Every container of this daemon, running or not.
    pub fn containers(&self) -> Result<Vec<String>, BoxError> {
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let list = self
            .rt
            .block_on(self.docker.list_containers(Some(options)))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }
}

/// `2026-11-27T17:59:49.268290323Z 8` -> the time and `8`.
fn parse_line(line: &str) -> Result<LogLine, BoxError> {
    let (stamp, text) = line.split_once(' ').unwrap_or((line, ""));
    let at = humantime::parse_rfc3339(stamp)
        .map_err(|e| format!("Docker log line without a timestamp ({e}): {line:?}"))?;
    Ok(LogLine {
        at,
        text: text.to_string(),
    })
}
