//! Move a live process to another host: `criu::migrate::send` on the
//! source, `criu::migrate::receive` on the destination.
//!
//! ```text
//! sudo cargo run -p criu-rs-examples --example send_receive -- [--strategy stop-and-copy|page-server|lazy]
//! ```
//!
//! Both ends run in this one program here: the destination accepts a TCP
//! connection on 127.0.0.1 and calls `receive` on a thread, the source
//! connects and calls `send` with the pid of a counter (`counter/mod.rs`).
//! Between two machines each runs its half (as `criu-rs receive` and
//! `criu-rs send` do), and wraps the `TcpStream` in `criu::tls::TlsStream`
//! (mutual TLS) unless the network is trusted entirely.
//!
//! On one machine both "hosts" share the pid numbers, and the source keeps
//! its stopped copy until the destination has restored: so the counter
//! runs as the init of its own PID namespace (`unshare --pid --fork`),
//! whose pids cannot collide with any here.

use std::error::Error;
use std::fs::{self, File};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::Parser;
use criu::migrate::{self, DestConfig, SourceConfig, Strategy};
use criu::Criu;

mod counter;

#[derive(Parser)]
#[command(about = "Migrate a counter with criu::migrate::send and receive")]
struct Args {
    /// `stop-and-copy`, `page-server` (memory streams into the
    /// destination's page server) or `lazy` (post-copy).
    #[arg(long, default_value = "stop-and-copy")]
    strategy: Strategy,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("criu-rs-send-receive-{}", std::process::id()));
    fs::create_dir(&dir)?;
    let result = migrate_counter(&dir, args.strategy);
    fs::remove_dir_all(&dir)?;
    result
}

fn migrate_counter(dir: &Path, strategy: Strategy) -> Result<(), Box<dyn Error>> {
    // `unshare` forks the namespace's init, which becomes a session leader
    // (`setsid`, inside the namespace: CRIU requires it) and runs python3.
    let out = dir.join("counter.out");
    let mut unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "setsid",
            "python3",
            "-c",
            counter::SCRIPT,
        ])
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(Stdio::null())
        .spawn()?;
    let moved = counter::wait_for(&out, 100)
        .and_then(|()| move_tree(first_child(unshare.id())?, strategy, &out));
    // The source's copy is gone once the move succeeded; if it failed,
    // the counter was resumed where it was: stop it.
    let _ = unshare.kill();
    unshare.wait()?;
    moved
}

fn move_tree(root: i32, strategy: Strategy, out: &Path) -> Result<(), Box<dyn Error>> {
    // One connection: the source's end and the destination's.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut to_destination = TcpStream::connect(listener.local_addr()?)?;
    let (mut from_source, _) = listener.accept()?;

    // The destination restores the tree as its child (on its own thread
    // here; on its own machine between two).
    let destination = std::thread::spawn(move || {
        migrate::receive(&Criu::new(), &mut from_source, DestConfig::new())
    });
    // The source: the tree is stopped, dumped, sent; it is killed only once
    // the destination says it runs (on any failure it runs on here).
    let config = SourceConfig::new(strategy);
    let sent = migrate::send(&Criu::new(), root, &mut to_destination, config);
    drop(to_destination);
    let received = destination.join().map_err(|_| "the destination panicked")?;
    let (sent, received) = (sent?, received?);

    // The restored counter writes on into the same file (the same path on
    // this machine; between machines the files a tree has open must exist
    // on the destination too).
    let counted_on = counter::wait_for(out, counter::last(out)? + 100);
    let mut child = received.child;
    child.kill()?;
    child.wait()?;
    counted_on?;
    let continuous = counter::continuous(out)?;

    println!(
        "{}: pid {} moved, restored as pid {} (its own PID namespace's init)",
        sent.strategy,
        sent.pid,
        child.pid()
    );
    println!(
        "  dump     {:>7.1} ms; {:.1} MiB over the stream, {:.1} MiB to the page server",
        ms(sent.dump.wall_time),
        sent.transfer.bytes as f64 / 1048576.0,
        sent.page_server_bytes as f64 / 1048576.0
    );
    println!("  restore  {:>7.1} ms", ms(received.restore.wall_time));
    println!(
        "  downtime {:>7.1} ms (stopped to restored)",
        ms(sent.stopped_to_restored)
    );
    println!(
        "  counted to {} across the move, no number repeated or skipped: {continuous}",
        counter::last(out)?
    );
    if !continuous {
        return Err("the counter did not continue where it stopped".into());
    }
    Ok(())
}

/// The first child of `pid` (the init `unshare --fork` started).
fn first_child(pid: u32) -> Result<i32, Box<dyn Error>> {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    let first = children
        .split_whitespace()
        .next()
        .ok_or("unshare has no child")?;
    Ok(first.parse()?)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
