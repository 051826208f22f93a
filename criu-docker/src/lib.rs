//! Move a running Docker container to another Docker host, with CRIU.
//!
//! A user's container (one this crate did not start) on host A moves to
//! host B, its memory intact: [`send`] on A and [`receive`] on B, each
//! with its end of one connected byte stream (a [`Transport`]: TCP, a
//! unix socket, or criu-rs's TLS stream) and a [`DockerClient`] of its
//! own host's daemon (`DOCKER_HOST`, or a `unix://` / `tcp://` URI).
//!
//! ```no_run
//! use std::net::TcpStream;
//! use criu_docker::{send, DockerClient, SendConfig};
//!
//! let docker = DockerClient::connect(None)?; // DOCKER_HOST or /var/run/docker.sock
//! let mut stream = TcpStream::connect("192.0.2.2:7000")?;
//! let report = send(&docker, "my-redis", &mut stream, &SendConfig::new())?;
//! println!("moved, down for {:?}", report.downtime);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What happens
//!
//! 1. Pre-flight, before anything stops. On A: the daemon is in
//!    experimental mode, its data root is on this machine (the checkpoint
//!    is read from its files), CRIU works, the container runs under runc.
//!    On B, told the container's description: the same, plus the image
//!    (the same ID, or the same name with the same layers), the volumes
//!    and bind sources, the network, and a free name; then B creates the
//!    container (the same image, command, entry point, environment,
//!    labels, mounts, network mode, restart policy: its whole
//!    configuration), so that a configuration B's daemon refuses is known
//!    before A stops. Any refusal names every reason with its fix.
//!    When B lacks the image and [`SendConfig::registry`] names a
//!    registry, A's daemon pushes the image there and B's pulls it (by
//!    the pushed digest), still before anything stops.
//! 2. `docker checkpoint create` on A (the container stops).
//! 3. The checkpoint's files go over the stream (criu-rs's image stream,
//!    CRC-checked, received into a private directory and renamed into
//!    place): into the new container's own checkpoints folder on B,
//!    because Docker 20.10 refuses `docker start --checkpoint-dir`.
//! 4. `docker start --checkpoint` on B; B reports it running.
//! 5. A removes its container (or keeps it stopped, [`SendConfig::keep_source`]).
//!
//! If anything fails after step 2 and before B runs the container, B
//! removes its container and A starts its own again from the same
//! checkpoint: it goes on where it stopped, nothing lost. Every error of
//! [`send`] says where the source container is ([`SourceState`]).
//!
//! # What is not carried
//!
//! What Docker's checkpoint does not hold: the container's writable layer
//! (files it wrote outside its volumes), the contents of volumes and bind
//! mounts (B must have them), established TCP connections (a checkpoint
//! with one fails). A container with its own network namespace gets B's
//! addresses.
//!
//! # Inside
//!
//! * `client`: [`DockerClient`], a blocking client of one daemon (bollard
//!   on a current-thread runtime), and `raw`, the one call bollard lacks;
//! * `spec`: [`ContainerSpec`], the container as inspected on A;
//! * `image`: the image through a registry, for a B that lacks it;
//! * `preflight`: the checks of each side;
//! * `checkpoint`: checkpoints in a daemon's files;
//! * `wire`: the messages; `send` and `receive`: the two sides;
//! * `report`: what a move cost.

#![deny(missing_docs)]

mod checkpoint;
mod client;
mod error;
mod image;
mod preflight;
mod raw;
mod receive;
mod report;
mod send;
mod spec;
mod wire;

pub use checkpoint::checkpoint_dir;
pub use client::{DockerClient, DEFAULT_HOST};
pub use criu::transfer::Transport;
pub use error::{Error, Result, SourceState};
pub use preflight::Prepared;
pub use receive::{receive, ReceiveConfig};
pub use report::{ReceiveReport, SendReport};
pub use send::{send, SendConfig};
pub use spec::{ContainerSpec, Mount};
