//! The clients: K connections from the client host, each on its own
//! thread, sending a request every few milliseconds and checking every
//! answer (latency, counter continuity, the server's memory checksum).
//! An error or reset is counted and the connection made again (a
//! reconnect), so that one failure does not hide the rest.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{expected_page_checksum, ANSWER_LEN, REQUEST_LEN};
use crate::hosts::Host;

/// How long an answer may take before the client calls it an error (far
/// beyond any migration of the sizes used here).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// What one connection saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnStats {
    /// Answers received.
    pub answers: u64,
    /// The longest time from a request to its answer.
    pub longest_wait_us: u64,
    /// Errors: failed connects, reads, writes, resets, timeouts, short or
    /// garbled answers.
    pub errors: u64,
    /// Connections made again after an error.
    pub reconnects: u64,
    /// Answers whose counter was not the previous one plus one.
    pub counter_breaks: u64,
    /// Answers whose page checksum was wrong.
    pub bad_checksums: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
}

impl ConnStats {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

/// K client connections running on their threads.
pub struct Clients {
    stop: Arc<AtomicBool>,
    answers: Vec<Arc<AtomicU64>>,
    threads: Vec<JoinHandle<ConnStats>>,
}

impl Clients {
    /// Opens `k` connections from `host` to `target` and starts sending a
    /// request on each every `interval`. Returns once every connection is
    /// made.
    pub fn start(
        host: &Host,
        target: SocketAddr,
        k: usize,
        interval: Duration,
    ) -> std::io::Result<Clients> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Clients {
            stop: stop.clone(),
            answers: Vec::new(),
            threads: Vec::new(),
        };
        for _ in 0..k {
            let stream =
                host.run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))??;
            let answers = Arc::new(AtomicU64::new(0));
            clients.answers.push(answers.clone());
            let (netns, stop) = (host.netns_path(), stop.clone());
            clients.threads.push(std::thread::spawn(move || {
                let conn = Conn::new(stream, target, interval, answers, stop);
                conn.run(&netns)
            }));
        }
        Ok(clients)
    }

    /// The fewest answers any connection has had so far.
    pub fn min_answers(&self) -> u64 {
        self.answers
            .iter()
            .map(|a| a.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }

    /// Waits until every connection has had at least `n` answers.
    pub fn wait_for_answers(&self, n: u64, timeout: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.min_answers() < n {
            if Instant::now() > deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "a connection had {} answers, not {n}, in {timeout:?}",
                        self.min_answers()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Stops every connection (each finishes its request in flight) and
    /// returns what each saw.
    pub fn stop(mut self) -> Vec<ConnStats> {
        self.stop.store(true, Ordering::SeqCst);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    let mut s = ConnStats::default();
                    s.error("the client thread panicked".into());
                    s
                })
            })
            .collect()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One connection's loop.
struct Conn {
    stream: Option<TcpStream>,
    target: SocketAddr,
    interval: Duration,
    answers: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    last_counter: u64,
    seq: u64,
    stats: ConnStats,
}

impl Conn {
    fn new(
        stream: TcpStream,
        target: SocketAddr,
        interval: Duration,
        answers: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
    ) -> Conn {
        Conn {
            stream: Some(stream),
            target,
            interval,
            answers,
            stop,
            last_counter: 0,
            seq: 0,
            stats: ConnStats::default(),
        }
    }

    /// Runs in the client host's network namespace (for reconnects).
    fn run(mut self, netns: &std::path::Path) -> ConnStats {
        if let Err(e) = enter_netns(netns) {
            self.stats.error(format!("entering the client host: {e}"));
            return self.stats;
        }
        while !self.stop.load(Ordering::SeqCst) {
            if self.stream.is_none() {
                self.reconnect();
            }
            if let Err(e) = self.exchange() {
                self.stats.error(e);
                self.stream = None;
            }
            std::thread::sleep(self.interval);
        }
        self.stats
    }

    fn reconnect(&mut self) {
        self.stats.reconnects += 1;
        self.last_counter = 0;
        match TcpStream::connect_timeout(&self.target, Duration::from_secs(5)) {
            Ok(s) => self.stream = Some(s),
            Err(e) => self.stats.error(format!("reconnecting: {e}")),
        }
    }

    /// One request and its answer.
    fn exchange(&mut self) -> Result<(), String> {
        let Some(s) = self.stream.as_mut() else {
            return Ok(());
        };
        s.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))
            .map_err(|e| format!("timeout: {e}"))?;
        self.seq += 1;
        let sent = Instant::now();
        let request: [u8; REQUEST_LEN] = self.seq.to_le_bytes();
        s.write_all(&request)
            .map_err(|e| format!("request {}: {e}", self.seq))?;
        let mut answer = [0u8; ANSWER_LEN];
        s.read_exact(&mut answer)
            .map_err(|e| format!("answer {}: {e}", self.seq))?;
        let waited = sent.elapsed().as_micros() as u64;
        self.stats.longest_wait_us = self.stats.longest_wait_us.max(waited);
        self.check(&answer);
        Ok(())
    }

    fn check(&mut self, answer: &[u8; ANSWER_LEN]) {
        let word =
            |i: usize| u64::from_le_bytes(answer[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let (counter, page, sum) = (word(0), word(1), word(2));
        if counter != self.last_counter + 1 {
            self.stats.counter_breaks += 1;
        }
        if sum != expected_page_checksum(page) {
            self.stats.bad_checksums += 1;
        }
        self.last_counter = counter;
        self.stats.answers += 1;
        self.answers.fetch_add(1, Ordering::SeqCst);
    }
}

/// Moves this thread into the network namespace at `path`.
fn enter_netns(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let ns = std::fs::File::open(path)?;
    // SAFETY: setns on this thread only, with an open nsfs descriptor.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What all the clients saw, summed up.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientReport {
    /// Connections.
    pub connections: usize,
    /// Answers, all connections together.
    pub answers: u64,
    /// The longest time any request waited for its answer, in ms.
    pub longest_stall_ms: f64,
    /// Errors (see [`ConnStats::errors`]).
    pub errors: u64,
    /// Reconnects after errors.
    pub reconnects: u64,
    /// Whether every counter went on by exactly one on every connection.
    pub counters_continuous: bool,
    /// Whether every page checksum was right.
    pub checksums_ok: bool,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

impl ClientReport {
    /// Sums up the connections' statistics.
    pub fn of(conns: &[ConnStats]) -> ClientReport {
        ClientReport {
            connections: conns.len(),
            answers: conns.iter().map(|c| c.answers).sum(),
            longest_stall_ms: conns.iter().map(|c| c.longest_wait_us).max().unwrap_or(0) as f64
                / 1e3,
            errors: conns.iter().map(|c| c.errors).sum(),
            reconnects: conns.iter().map(|c| c.reconnects).sum(),
            counters_continuous: conns.iter().all(|c| c.counter_breaks == 0 && c.answers > 0),
            checksums_ok: conns.iter().all(|c| c.bad_checksums == 0),
            first_error: conns.iter().find_map(|c| c.first_error.clone()),
        }
    }

    /// Whether the clients saw nothing but a stall.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.reconnects == 0 && self.counters_continuous && self.checksums_ok
    }
}
