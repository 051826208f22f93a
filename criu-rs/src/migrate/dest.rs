//! The destination side: receive the images the way the strategy says,
//! restore the tree as a child of this process, continue it, report, and
//! wait for the source's confirmation.

use std::path::Path;

use super::config::DestConfig;
use super::report::DestReport;
use super::stopped::continue_tree;
use super::strategy::{self, DestSide, Inbound, Received};
use super::wire::{self, migration, unexpected, Msg};
use crate::child::RestoredChild;
use crate::client::Criu;
use crate::error::{Error, Result};
use crate::images::ImagesDir;
use crate::options::Options;
use crate::report::RestoreReport;
use crate::transfer::{read_header, Transport};

pub(super) fn receive(
    criu: &Criu,
    stream: &mut dyn Transport,
    mut cfg: DestConfig<'_>,
) -> Result<DestReport> {
    if let Some(files) = cfg.criu_tls.clone().or_else(|| stream.criu_tls()) {
        cfg.daemons.tls(&files);
    }
    let images_path = cfg.work_dir.join("images");
    let r = receive_inner(criu, stream, &cfg, &images_path);
    if let Err(e) = &r {
        wire::tell_failure(stream, e);
        let _ = std::fs::remove_dir_all(&images_path);
        let _ = std::fs::remove_dir_all(cfg.work_dir.join("images.rest"));
    }
    r
}

fn receive_inner(
    criu: &Criu,
    stream: &mut dyn Transport,
    cfg: &DestConfig<'_>,
    images_path: &Path,
) -> Result<DestReport> {
    stream
        .prepare(cfg.deadline)
        .map_err(|e| Error::io("preparing the stream (timeouts, TCP_NODELAY)", e))?;
    read_header(&mut &mut *stream)?;
    let strategy = match wire::recv(stream)? {
        Msg::Hello { strategy } => strategy,
        other => return Err(unexpected("a hello", &other)),
    };
    let local = cfg
        .criu_address
        .or_else(|| stream.ip_addresses().map(|a| a.0));
    let mut side = strategy::dest_side(strategy, cfg, local)?;
    let Received { images, transfer } = side.receive(Inbound {
        stream: &mut *stream,
        images: images_path,
    })?;
    let (child, restore) = restore(criu, &images, cfg, side.as_ref())?;
    wire::send(
        stream,
        &Msg::Restored {
            pid: child.pid(),
            wall_us: restore.wall_time.as_micros() as u64,
            restore_time_us: restore.stats.map(|s| s.restore_time.as_micros() as u64),
        },
    )?;
    side.after_restore(cfg.daemon_timeout)?;
    await_done(stream)?;
    Ok(DestReport {
        strategy,
        child,
        restore,
        transfer,
    })
}

/// Restores the tree from `images` as a child of this process, and
/// continues it (CRIU restores it stopped).
fn restore(
    criu: &Criu,
    images: &ImagesDir,
    cfg: &DestConfig<'_>,
    side: &dyn DestSide,
) -> Result<(RestoredChild, RestoreReport)> {
    let mut o = Options::new();
    if let Some(c) = &cfg.customize {
        c(&mut o);
    }
    o.images_dir(images).log_file("restore.log");
    if let Some(d) = cfg.deadline {
        o.deadline(d);
    }
    side.restore_options(&mut o);
    let (child, restore) = criu.restore_child(&mut o)?;
    continue_tree(child.pid());
    Ok((child, restore))
}

/// Waits for the source's confirmation that its copy is gone.
fn await_done(stream: &mut dyn Transport) -> Result<()> {
    match wire::recv(stream) {
        Ok(Msg::Done) => Ok(()),
        Ok(other) => Err(unexpected("done", &other)),
        Err(e) => Err(migration(
            "the source did not confirm the end of the migration",
            Some(e),
        )),
    }
}
