//! Everything checked before the source container stops, on each side.
//! Each check adds a reason (with its fix) rather than stopping at the
//! first, so that one refusal names everything the user must fix.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::client::DockerClient;
use crate::error::{Error, Result};
use crate::spec::ContainerSpec;

/// What the destination prepared: a created, not started, container.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The new container's name.
    pub name: String,
    /// Its ID.
    pub id: String,
    /// The image reference it was created from.
    pub image: String,
    /// The destination daemon's data root.
    pub data_root: PathBuf,
}

/// The reasons found so far.
#[derive(Default)]
struct Reasons(Vec<String>);

impl Reasons {
    fn add(&mut self, r: impl Into<String>) {
        self.0.push(r.into());
    }

    fn into_result(self, side: &'static str) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.refusal(side))
        }
    }

    fn refusal(self, side: &'static str) -> Error {
        Error::Refused {
            side,
            reasons: self.0,
        }
    }
}

/// Checks that the daemon can checkpoint or restore: experimental mode,
/// and a data root this process can reach. Returns the data root.
fn daemon(docker: &DockerClient, why: &mut Reasons) -> Result<PathBuf> {
    let info = docker.info()?;
    if info.experimental_build != Some(true) {
        why.add(format!(
            "the daemon at {} is not in experimental mode, which checkpoints need: add \
             \"experimental\": true to its daemon.json and restart it",
            docker.uri()
        ));
    }
    let root = PathBuf::from(info.docker_root_dir.unwrap_or_default());
    if !root.join("containers").is_dir() {
        why.add(format!(
            "the daemon's data root {} is not on this machine: run this where dockerd runs \
             (the checkpoint lives in its files)",
            root.display()
        ));
    }
    Ok(root)
}

/// Whether CRIU works on this machine (`criu check`): runc runs it for
/// the daemon.
fn criu_usable(why: &mut Reasons) {
    let out = Command::new("criu")
        .arg("check")
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) => why.add(format!(
            "cannot run criu ({e}): install CRIU (4.1 or newer on kernels from 6.13) on the \
             daemon's PATH"
        )),
        Ok(o) if !o.status.success() => why.add(format!(
            "`criu check` fails on this machine, so the daemon cannot checkpoint: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .chain(String::from_utf8_lossy(&o.stdout).lines())
                .filter(|l| l.contains("Error") || l.contains("rror"))
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        )),
        Ok(_) => {}
    }
}

/// The source side: the container runs, the daemon can checkpoint it.
/// Returns the container's description and the daemon's data root.
pub fn source(docker: &DockerClient, container: &str) -> Result<(ContainerSpec, PathBuf)> {
    let mut why = Reasons::default();
    let root = daemon(docker, &mut why)?;
    let spec = ContainerSpec::inspect(docker, container)?;
    if !spec.running {
        why.add(format!(
            "the container {container} is not running (or is paused): only a running container \
             can be moved"
        ));
    }
    if spec.network_mode.starts_with("container:") {
        why.add(format!(
            "the container {container} shares another container's network ({}): move that one \
             instead",
            spec.network_mode
        ));
    }
    let runtime = spec.create["HostConfig"]["Runtime"]
        .as_str()
        .unwrap_or("runc");
    if runtime != "runc" {
        why.add(format!(
            "the container runs under the runtime {runtime}: only runc checkpoints with CRIU"
        ));
    }
    if !root.join("containers").join(&spec.id).is_dir() && root.join("containers").is_dir() {
        why.add(format!(
            "the container {} is not in {}: is --docker-host this machine's daemon?",
            spec.id,
            root.display()
        ));
    }
    criu_usable(&mut why);
    why.into_result("source")?;
    Ok((spec, root))
}

/// What the destination has of the container's image.
enum ImageHere {
    /// This reference (name or ID) is the container's image.
    Found(String),
    /// It has not got it: why, with the fix.
    Missing(String),
}

/// Which of B's images is the container's image: the same ID, or the same
/// name with the same layers.
fn image(docker: &DockerClient, spec: &ContainerSpec) -> Result<ImageHere> {
    let by_id = optional(docker.image(&spec.image_id))?;
    let by_name = optional(docker.image(&spec.image))?;
    let layers = |i: &bollard::models::ImageInspect| {
        i.root_fs
            .as_ref()
            .and_then(|r| r.layers.clone())
            .unwrap_or_default()
    };
    Ok(match (by_id, by_name) {
        (_, Some(named)) if named.id.as_deref() == Some(&spec.image_id) => {
            ImageHere::Found(spec.image.clone())
        }
        (_, Some(named)) if layers(&named) == spec.layers => ImageHere::Found(spec.image.clone()),
        (Some(_), _) => ImageHere::Found(spec.image_id.clone()),
        (None, Some(named)) => ImageHere::Missing(format!(
            "the image {} here ({}) is not the source's ({}): its files differ; give this \
             host the source's image (docker save | docker load), or let the source push it \
             through a registry both hosts reach (send --registry HOST:PORT/REPO)",
            spec.image,
            named.id.unwrap_or_default(),
            spec.image_id
        )),
        (None, None) => ImageHere::Missing(format!(
            "this host has no image {} ({}): load it here first (docker save on the source, \
             docker load here), or let the source push it through a registry both hosts \
             reach (send --registry HOST:PORT/REPO)",
            spec.image, spec.image_id
        )),
    })
}

/// `Some` for an answer, `None` for a 404.
fn optional<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn mounts(docker: &DockerClient, spec: &ContainerSpec, why: &mut Reasons) -> Result<()> {
    for m in &spec.mounts {
        match (m.kind.as_str(), &m.name, &m.source) {
            ("volume", Some(name), _) => {
                if !docker.volume_exists(name)? {
                    why.add(format!(
                        "no volume {name} here (mounted on {}): create it, with its data, first",
                        m.destination
                    ));
                }
            }
            ("bind", _, Some(source)) => {
                if !Path::new(source).exists() {
                    why.add(format!(
                        "no {source} here (bound on {}): create it, with its data, first",
                        m.destination
                    ));
                }
            }
            ("tmpfs", _, _) => {}
            (kind, _, _) => why.add(format!(
                "the mount on {} is of a kind ({kind}) that cannot be moved",
                m.destination
            )),
        }
    }
    Ok(())
}

fn network(docker: &DockerClient, spec: &ContainerSpec, why: &mut Reasons) -> Result<()> {
    let name = match spec.network_mode.as_str() {
        "" | "host" | "none" => return Ok(()),
        "default" => "bridge",
        other => other,
    };
    if !docker.network_exists(name)? {
        why.add(format!(
            "no network {name} here (the container's network mode is {}): create it first",
            spec.network_mode
        ));
    }
    Ok(())
}

/// What the destination's pre-flight found.
#[derive(Debug)]
pub(crate) enum Checked {
    /// Everything is here; the image is this reference.
    Ready {
        /// The image's reference here.
        image: String,
        /// The daemon's data root.
        data_root: PathBuf,
    },
    /// Everything but the image is here, and the source offered to push
    /// it through a registry.
    NeedsImage {
        /// The daemon's data root.
        data_root: PathBuf,
    },
}

/// The destination side: the daemon can restore, the image (unless
/// `registry`, the source's offer to push it, can bring it), volumes and
/// network exist, the name is free.
pub(crate) fn destination(
    docker: &DockerClient,
    spec: &ContainerSpec,
    name: &str,
    registry: bool,
) -> Result<Checked> {
    let mut why = Reasons::default();
    let data_root = daemon(docker, &mut why)?;
    criu_usable(&mut why);
    if docker.container_exists(name)? {
        why.add(format!(
            "a container named {name} exists here: remove it, or give the move another name"
        ));
    }
    let image = image(docker, spec)?;
    mounts(docker, spec, &mut why)?;
    network(docker, spec, &mut why)?;
    match image {
        ImageHere::Found(image) => {
            why.into_result("destination")?;
            Ok(Checked::Ready { image, data_root })
        }
        ImageHere::Missing(_) if registry && why.0.is_empty() => {
            Ok(Checked::NeedsImage { data_root })
        }
        ImageHere::Missing(reason) => {
            why.add(reason);
            Err(why.refusal("destination"))
        }
    }
}

/// After the pull of `pulled`: the container's image, now here, named as
/// on the source when no image here has that name yet.
pub(crate) fn pulled(docker: &DockerClient, spec: &ContainerSpec, pulled: &str) -> Result<String> {
    match image(docker, spec)? {
        ImageHere::Found(image) if image == spec.image_id => {
            let (repo, tag) = crate::image::split_tag(&spec.image);
            let named = !spec.image.contains('@') && !spec.image.starts_with("sha256:");
            if named && optional(docker.image(&spec.image))?.is_none() {
                docker.tag(&spec.image_id, repo, tag.unwrap_or("latest"))?;
                return Ok(spec.image.clone());
            }
            Ok(image)
        }
        ImageHere::Found(image) => Ok(image),
        ImageHere::Missing(_) => Err(Error::Refused {
            side: "destination",
            reasons: vec![format!(
                "{pulled}, pulled from the registry, is not the container's image ({}): is \
                 something else pushing to that repository? name another with --registry",
                spec.image_id
            )],
        }),
    }
}

/// Creates the container (not started), so that a configuration B's
/// daemon refuses is known before the source stops.
pub(crate) fn create(
    docker: &DockerClient,
    spec: &ContainerSpec,
    name: &str,
    image: String,
    data_root: PathBuf,
) -> Result<Prepared> {
    let id = docker
        .create(name, spec.create_body(&image)?)
        .map_err(|e| Error::Refused {
            side: "destination",
            reasons: vec![format!(
                "the daemon refused the container's configuration: {e}"
            )],
        })?;
    Ok(Prepared {
        name: name.to_string(),
        id,
        image,
        data_root,
    })
}
