//! `send --docker CONTAINER` and `receive --docker` (cargo feature
//! `docker`): a running Docker container moved to another Docker host with
//! criu-docker, over the same connection as the process route (mutual TLS
//! unless `--plain`). A signal before the destination runs the container
//! breaks the connection off: the destination removes its container and
//! the source starts its own again from its checkpoint.

use std::time::Duration;

use clap::Args;
use criu_docker::{DockerClient, ReceiveConfig, SendConfig, SendReport};

use super::migrate::{
    accept, connect, interrupted, interrupts, link, listen, resolve, wait_for_source, write_report,
    Restored,
};
use crate::args::{ReceiveArgs, SendArgs};
use crate::error::{CliError, CliResult, Exit};

/// `send`'s Docker flags.
#[derive(Args, Debug, Clone)]
pub struct DockerSend {
    /// Move this running Docker container (name or ID) instead of a
    /// process tree; `receive --docker` must wait on the destination.
    #[arg(long, value_name = "CONTAINER")]
    pub docker: Option<String>,
    /// The source's Docker daemon: unix:///PATH or tcp://HOST:PORT on this
    /// machine (default: /var/run/docker.sock).
    #[arg(long, value_name = "URI", env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// Keep the source container, stopped with its checkpoint and restart
    /// policy `no`, once the destination runs it (default: remove it).
    #[arg(long, requires = "docker")]
    pub keep_source: bool,
    /// A registry both Docker hosts reach, HOST[:PORT][/PATH][:TAG]: when
    /// the destination lacks the container's image, this daemon pushes it
    /// there and the destination's pulls it, in the pre-flight, before
    /// anything stops (a plain-HTTP registry must be in both daemons'
    /// insecure-registries; no credentials are sent). Without it, such a
    /// move is refused.
    #[arg(long, value_name = "REGISTRY", requires = "docker")]
    pub registry: Option<String>,
}

/// `receive`'s Docker flags.
#[derive(Args, Debug, Clone)]
pub struct DockerReceive {
    /// Receive a Docker container (from `send --docker`) instead of a
    /// process tree.
    #[arg(long)]
    pub docker: bool,
    /// The destination's Docker daemon: unix:///PATH or tcp://HOST:PORT on
    /// this machine (default: /var/run/docker.sock).
    #[arg(long, value_name = "URI", env = "DOCKER_HOST")]
    pub docker_host: Option<String>,
    /// The container's name here (default: its name on the source).
    #[arg(long, value_name = "NAME", requires = "docker")]
    pub name: Option<String>,
}

fn failed(e: criu_docker::Error) -> CliError {
    let exit = match &e {
        _ if e.is_refused() => Exit::Refused,
        criu_docker::Error::Checkpoint { .. } | criu_docker::Error::Restore(_) => Exit::Criu,
        criu_docker::Error::Transfer(_) | criu_docker::Error::Protocol(_) => Exit::Peer,
        criu_docker::Error::Moving { cause, .. }
            if matches!(**cause, criu_docker::Error::Transfer(_)) =>
        {
            Exit::Peer
        }
        _ => Exit::Failure,
    };
    CliError::new(exit, e.to_string())
}

fn docker(host: Option<&str>) -> CliResult<DockerClient> {
    DockerClient::connect(host).map_err(|e| {
        CliError::new(Exit::Failure, e.to_string())
            .hint("--docker-host (or DOCKER_HOST) names the daemon: unix:///var/run/docker.sock")
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_send(r: &SendReport, to: &str) {
    eprintln!(
        "moved container {} to {to}: runs there as {} ({})",
        r.container,
        r.dest_name,
        &r.dest_id[..r.dest_id.len().min(12)]
    );
    eprintln!(
        "  downtime {:.1} ms: checkpoint {:.1} (CRIU ran {}), transfer {:.1}, restore {:.1}, handoff {:.1} ms",
        ms(r.downtime),
        ms(r.checkpoint),
        r.criu_dump_run
            .map_or("?".into(), |d| format!("{:.1} ms", ms(d))),
        ms(r.transfer.elapsed),
        ms(r.restore),
        ms(r.handoff)
    );
    eprintln!(
        "  checkpoint {:.1} MiB in {} files; pre-flight {:.1} ms; total {:.1} ms; source {}",
        r.transfer.bytes as f64 / 1048576.0,
        r.transfer.files,
        ms(r.preflight),
        ms(r.total),
        if r.source_removed {
            "removed"
        } else {
            "kept, stopped"
        }
    );
    if let Some(push) = r.image_push {
        eprintln!(
            "  the image {} went through the registry (push {:.1} ms, in the pre-flight)",
            r.image,
            ms(push)
        );
    }
}

/// Moves `--docker`'s container to `--to`.
pub fn send(a: SendArgs, d: &DockerSend, container: &str) -> CliResult {
    let link = link(&a.security)?;
    let to = resolve(&a.to)?;
    let client = docker(d.docker_host.as_deref())?;
    let signals = interrupts()?;
    let (mut stream, socket) = connect(&link, to, &a.security, "receive --docker --listen")?;
    signals.stalled_peer(socket);
    let mut config = SendConfig::new().keep_source(d.keep_source);
    if let Some(registry) = &d.registry {
        config = config.registry(registry.clone());
    }
    // criu-docker has no cancellation token: a signal wakes its reads.
    let wake = stream.interrupter();
    let result = signals.during(wake, || {
        criu_docker::send(&client, container, &mut *stream, &config)
    });
    let report = match (result, signals.caught()) {
        (Err(e), Some(sig)) => {
            let state = e
                .source_state()
                .map_or("unknown".into(), |s| format!("{s:?}"));
            return Err(interrupted(
                sig,
                &format!("the move was broken off; the source container is {state}"),
            ));
        }
        (r, _) => r.map_err(failed)?,
    };
    print_send(&report, &to.to_string());
    write_report(
        a.json.as_deref(),
        &report,
        link.name(),
        "to",
        &to.to_string(),
    )
}

/// Waits for one `send --docker` on `--listen`; runs the container here.
pub fn receive(a: ReceiveArgs, d: &DockerReceive) -> CliResult {
    let link = link(&a.security)?;
    let client = docker(d.docker_host.as_deref())?;
    let listener = listen(a.listen)?;
    let signals = interrupts()?;
    eprintln!("waiting for a container on {} ({})", a.listen, link.name());
    wait_for_source(&listener, &signals)?;
    let (mut stream, peer) = accept(&link, &listener, &a.security)?;
    eprintln!("{peer} authenticated; receiving");
    let mut config = ReceiveConfig::new();
    if let Some(name) = &d.name {
        config = config.name(name.clone());
    }
    let wake = stream.interrupter();
    let result = signals.during(wake, || {
        criu_docker::receive(&client, &mut *stream, &config)
    });
    let report =
        match (result, signals.caught()) {
            (Err(_), Some(sig)) => return Err(interrupted(
                sig,
                "the move was broken off; the container here is removed, the source runs its own",
            )),
            (r, _) => r.map_err(failed)?,
        };
    eprintln!(
        "container {} runs here ({}, {:.1} MiB of checkpoint, restore {:.1} ms{}){}",
        report.name,
        &report.id[..report.id.len().min(12)],
        report.transfer.bytes as f64 / 1048576.0,
        ms(report.restore),
        report.image_pull.map_or(String::new(), |d| format!(
            "; image {} pulled from the registry in {:.1} ms",
            report.image,
            ms(d)
        )),
        if report.source_confirmed {
            ""
        } else {
            "; the source did not confirm it removed its copy: check it"
        }
    );
    write_report(
        a.json.as_deref(),
        &report,
        link.name(),
        "peer",
        &peer.to_string(),
    )?;
    Restored {
        what: report.name.clone(),
        source_confirmed: report.source_confirmed,
    }
    .confirmed("container", "container")
}
