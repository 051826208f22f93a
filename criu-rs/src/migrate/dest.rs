//! The destination side: receive the images the way the strategy says,
//! restore the tree as a child of this process, continue it, report, and
//! keep it unless the source explicitly aborts.

use super::config::DestConfig;
use super::hold::continue_tree;
use super::report::DestReport;
use super::strategy::{self, Created, DestSide, Inbound, Received};
use super::wire::{self, failed, unexpected, Msg};
use crate::child::RestoredChild;
use crate::client::Criu;
use crate::error::{Error, Result, SourceState, Step};
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
    let mut created = Created::default();
    let mut step = Step::Handshake;
    let r = receive_inner(criu, stream, &cfg, &mut created, &mut step);
    r.map_err(|e| {
        let e = wire::at_step(e, step, SourceState::Unknown, || failed_at(step));
        wire::tell_failure(stream, &e);
        created.remove_all();
        e
    })
}

/// What the destination says when `step` failed.
fn failed_at(step: Step) -> String {
    match step {
        Step::Handshake => "the source's hello failed; nothing was received",
        Step::Transfer => "receiving the images failed; what arrived was removed",
        Step::Restore => "the restore failed; the received images were removed",
        Step::LazyPages => {
            "fetching the lazy pages failed; the restored copy was killed and the images removed"
        }
        _ => "the migration failed; the restored copy was killed",
    }
    .into()
}

fn receive_inner(
    criu: &Criu,
    stream: &mut dyn Transport,
    cfg: &DestConfig<'_>,
    created: &mut Created,
    step: &mut Step,
) -> Result<DestReport> {
    // Without a deadline a silent source is still given up, after the
    // limits' idle timeout.
    let timeout = cfg.deadline.unwrap_or(cfg.limits.idle());
    stream
        .prepare(Some(timeout))
        .map_err(|e| Error::io("preparing the stream (timeouts, TCP_NODELAY)", e))?;
    read_header(&mut &mut *stream)?;
    let strategy = match wire::recv(stream)? {
        Msg::Hello { strategy } => strategy,
        other => {
            return Err(unexpected(
                Step::Handshake,
                SourceState::Unknown,
                "a hello",
                &other,
            ))
        }
    };
    let local = match cfg.criu_address {
        Some(named) => Some(named),
        None => stream
            .ip_addresses()
            .map_err(wire::no_addresses)?
            .map(|a| a.0),
    };
    let mut side = strategy::dest_side(strategy, cfg, local)?;
    let work_dir = cfg.work_dir.hold()?;
    let images_path = work_dir.path().join("images");
    *step = Step::Transfer;
    let Received { images, transfer } = side.receive(Inbound {
        stream: &mut *stream,
        work_dir: work_dir.path(),
        images: &images_path,
        limits: &cfg.limits,
        created,
    })?;
    *step = Step::Restore;
    let (child, restore) = restore(criu, &images, cfg, side.as_ref())?;
    wire::send(
        stream,
        &Msg::Restored {
            pid: child.pid(),
            wall_us: restore.wall_time.as_micros() as u64,
            restore_time_us: restore.stats.map(|s| s.restore_time.as_micros() as u64),
        },
    )?;
    *step = Step::LazyPages;
    side.after_restore(cfg.daemon_timeout)?;
    *step = Step::Confirm;
    let source_confirmed = await_verdict(stream)?;
    Ok(DestReport {
        strategy,
        child,
        restore,
        transfer,
        source_confirmed,
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
    if cfg.tcp_established {
        o.tcp_established(true);
    }
    if let Some(d) = cfg.deadline {
        o.deadline(d);
    }
    side.restore_options(&mut o);
    let (child, restore) = criu.restore_child(&mut o)?;
    continue_tree(child.pid());
    Ok((child, restore))
}

/// The source's verdict on the restored copy, which runs already. `Done`
/// (the source stops its copy): confirmed, and answered with `Kept`. An
/// explicit abort: an error, and the restored copy goes. Anything else
/// (silence, a broken stream): the copy is kept unconfirmed, since the
/// source may have stopped its copy for good and a duplicate is better
/// than a loss.
fn await_verdict(stream: &mut dyn Transport) -> Result<bool> {
    match wire::recv(stream) {
        Ok(Msg::Done) => {
            // If this is lost the source resumes its copy too: a duplicate.
            let _ = wire::send(stream, &Msg::Kept);
            Ok(true)
        }
        Ok(Msg::Failed {
            message,
            source_state,
            ..
        }) => Err(failed(
            Step::Confirm,
            source_state.unwrap_or(SourceState::Resumed),
            format!(
                "the source aborted after the restore ({message}); the restored copy was killed"
            ),
            None,
        )),
        Ok(_) | Err(_) => Ok(false),
    }
}
