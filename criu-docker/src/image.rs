//! The container's image through a registry the user names, for a
//! destination that lacks it: the source's daemon pushes it
//! (`docker tag` + `docker push`), the destination's pulls it by the
//! pushed digest and names it as the source does. Both happen in the
//! pre-flight, before anything stops.
//!
//! The registry is named as `HOST[:PORT][/PATH][:TAG]`: without a path the
//! image keeps its own repository name under that host; without a tag it
//! keeps its own tag (`latest` when it has none). Both daemons must be
//! able to reach it (a plain-HTTP registry is listed in their
//! `insecure-registries`); no credentials are sent.

use std::time::{Duration, Instant};

use crate::client::DockerClient;
use crate::error::{Error, Result};
use crate::spec::ContainerSpec;

/// `REPO:TAG` split at the tag's colon (a port's colon comes before the
/// last `/`); the tag is `None` when there is none, or for a digest.
pub(crate) fn split_tag(reference: &str) -> (&str, Option<&str>) {
    if reference.contains('@') {
        return (reference, None);
    }
    let last = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last..].rfind(':') {
        Some(i) => (&reference[..last + i], Some(&reference[last + i + 1..])),
        None => (reference, None),
    }
}

/// The repository and tag the image is pushed as, for `registry` as the
/// user named it and the image as the container names it.
pub(crate) fn target(registry: &str, image: &str) -> Result<(String, String)> {
    let registry = registry.trim_end_matches('/');
    let bad = registry.is_empty()
        || registry.contains('@')
        || registry.contains("://")
        || registry.chars().any(char::is_whitespace);
    if bad {
        return Err(Error::Usage(format!(
            "--registry {registry:?}: give HOST[:PORT][/PATH][:TAG], e.g. \
             registry.example:5000/team/cache (no scheme, no digest)"
        )));
    }
    let (image_repo, image_tag) = split_tag(image.split('@').next().unwrap_or(image));
    let own_tag = image_tag.unwrap_or("latest");
    if !registry.contains('/') {
        // A registry host alone: the image's own repository path under it.
        let path = image_repo.rsplit('/').next().unwrap_or(image_repo);
        if path.is_empty() || path.starts_with("sha256") {
            return Err(Error::Usage(format!(
                "--registry {registry}: the container's image ({image}) has no name to push \
                 it under; name the repository too (HOST:PORT/REPO)"
            )));
        }
        return Ok((format!("{registry}/{path}"), own_tag.to_string()));
    }
    let (repo, tag) = split_tag(registry);
    Ok((repo.to_string(), tag.unwrap_or(own_tag).to_string()))
}

/// What the source pushed.
#[derive(Debug, Clone)]
pub(crate) struct Pushed {
    /// What the destination pulls: `REPO@sha256:...` (or `REPO:TAG` when
    /// the daemon did not report the digest).
    pub reference: String,
    /// The tag and push's wall time.
    pub elapsed: Duration,
}

/// Tags the container's image as the registry's repository and pushes
/// it; removes that tag again if this call made it.
pub(crate) fn push(docker: &DockerClient, spec: &ContainerSpec, registry: &str) -> Result<Pushed> {
    let t = Instant::now();
    let (repo, tag) = target(registry, &spec.image)?;
    let named = format!("{repo}:{tag}");
    let existing = match docker.image(&named) {
        Ok(i) => i.id,
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e),
    };
    if existing.as_deref().is_some_and(|id| id != spec.image_id) {
        return Err(Error::Usage(format!(
            "{named} names another image on the source host than the container's ({}): \
             name another repository or tag with --registry",
            spec.image_id
        )));
    }
    docker.tag(&spec.image_id, &repo, &tag)?;
    let pushed = docker.push(&repo, &tag);
    if existing.is_none() {
        let _ = docker.untag(&named);
    }
    let reference = match pushed? {
        Some(digest) => format!("{repo}@{digest}"),
        None => named,
    };
    Ok(Pushed {
        reference,
        elapsed: t.elapsed(),
    })
}

/// Pulls what the source pushed; its wall time.
pub(crate) fn pull(docker: &DockerClient, reference: &str) -> Result<Duration> {
    let t = Instant::now();
    docker.pull(reference)?;
    Ok(t.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_split_after_the_last_slash() {
        assert_eq!(split_tag("redis:7"), ("redis", Some("7")));
        assert_eq!(split_tag("h:5000/a/b"), ("h:5000/a/b", None));
        assert_eq!(split_tag("h:5000/a/b:x"), ("h:5000/a/b", Some("x")));
        assert_eq!(split_tag("h/a@sha256:00"), ("h/a@sha256:00", None));
    }

    #[test]
    fn the_target_keeps_what_the_user_did_not_name() {
        let t = |r, i| target(r, i).unwrap();
        assert_eq!(
            t("10.0.0.1:5000", "redis:7"),
            ("10.0.0.1:5000/redis".into(), "7".into())
        );
        assert_eq!(
            t("10.0.0.1:5000/team/cache", "library/redis"),
            ("10.0.0.1:5000/team/cache".into(), "latest".into())
        );
        assert_eq!(
            t("reg/team/cache:v2/", "redis:7"),
            ("reg/team/cache".into(), "v2".into())
        );
        for bad in ["", "http://reg/x", "reg/x@sha256:00", "a b"] {
            assert!(
                matches!(target(bad, "redis:7"), Err(Error::Usage(_))),
                "{bad}"
            );
        }
        assert!(target("reg:5000", "sha256:abcd").is_err());
    }
}
