//! A server to migrate with its clients connected.
//!
//! Usage: `criu-rs-tcp-server OUTPUT --listen ADDR:PORT [--interval-us N] [--memory-mib N]`
//!
//! It keeps MIB of patterned memory, listens on ADDR:PORT and answers every
//! 8-byte request on every connection with 24 bytes: the connection's next
//! counter value (1, 2, 3...), the index of one page of its memory and that
//! page's checksum, computed from the memory as it is now (see
//! `criu_testkit::tcp`). Like the counting workload it appends
//! `tick SEQ UNIX_NS` to OUTPUT every interval (the first once it listens),
//! so the time it was stopped shows as the largest gap. One thread, one
//! `poll` loop, non-blocking sockets.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criu_testkit::tcp::{page_checksum, pattern, ANSWER_LEN, PAGE_WORDS, REQUEST_LEN};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

struct Conn {
    stream: TcpStream,
    counter: u64,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
}

struct Args {
    out: String,
    listen: SocketAddr,
    interval: Duration,
    mib: usize,
}

fn parse() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).ok_or("missing OUTPUT")?.clone();
    let (mut listen, mut interval, mut mib) = (None, Duration::from_millis(1), 0);
    let mut it = args[2..].iter();
    while let Some(a) = it.next() {
        let v = it.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--listen" => listen = Some(v.parse().map_err(|e| format!("--listen: {e}"))?),
            "--interval-us" => interval = Duration::from_micros(v.parse().map_err(|_| "bad N")?),
            "--memory-mib" => mib = v.parse().map_err(|_| "bad MIB")?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let listen = listen.ok_or("--listen ADDR:PORT is required")?;
    Ok(Args {
        out,
        listen,
        interval,
        mib,
    })
}

/// Reads what is there; answers every whole request. False once the peer
/// closed or failed.
fn serve(c: &mut Conn, memory: &[u64]) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    let pages = (memory.len() / PAGE_WORDS).max(1) as u64;
    while c.inbuf.len() >= REQUEST_LEN {
        c.inbuf.drain(..REQUEST_LEN);
        c.counter += 1;
        let page = c.counter.wrapping_mul(7919) % pages;
        let start = page as usize * PAGE_WORDS;
        let sum = page_checksum(&memory[start..start + PAGE_WORDS]);
        c.outbuf.extend_from_slice(&c.counter.to_le_bytes());
        c.outbuf.extend_from_slice(&page.to_le_bytes());
        c.outbuf.extend_from_slice(&sum.to_le_bytes());
        debug_assert_eq!(c.outbuf.len() % ANSWER_LEN, 0);
    }
    flush(c)
}

fn flush(c: &mut Conn) -> bool {
    while !c.outbuf.is_empty() {
        match c.stream.write(&c.outbuf) {
            Ok(n) => {
                c.outbuf.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn accept_all(listener: &TcpListener, conns: &mut Vec<Conn>) {
    while let Ok((stream, _)) = listener.accept() {
        if stream.set_nonblocking(true).is_ok() {
            let _ = stream.set_nodelay(true);
            conns.push(Conn {
                stream,
                counter: 0,
                inbuf: Vec::new(),
                outbuf: Vec::new(),
            });
        }
    }
}

/// Which descriptors have something for us: the listener first.
fn wait(listener: &TcpListener, conns: &[Conn], timeout: Duration) -> Vec<bool> {
    let mut fds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    for c in conns {
        let mut ev = PollFlags::POLLIN;
        if !c.outbuf.is_empty() {
            ev |= PollFlags::POLLOUT;
        }
        fds.push(PollFd::new(c.stream.as_fd(), ev));
    }
    let ms = timeout.as_millis().clamp(0, 1000) as u16;
    let _ = poll(&mut fds, PollTimeout::from(ms));
    fds.iter()
        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
        .collect()
}

fn main() {
    let args = parse().unwrap_or_else(|e| {
        eprintln!("criu-rs-tcp-server: {e}");
        std::process::exit(2)
    });
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .unwrap_or_else(|e| {
            eprintln!("cannot open {}: {e}", args.out);
            std::process::exit(1)
        });
    let words = (args.mib * 1024 * 1024 / 8).max(16 * PAGE_WORDS);
    let memory: Vec<u64> = (0..words).map(pattern).collect();
    let listener = TcpListener::bind(args.listen).unwrap_or_else(|e| {
        eprintln!("cannot listen on {}: {e}", args.listen);
        std::process::exit(1)
    });
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let mut conns: Vec<Conn> = Vec::new();
    let (mut seq, mut next_tick) = (0u64, Instant::now());
    loop {
        if Instant::now() >= next_tick {
            seq += 1;
            let ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            if out
                .write_all(format!("tick {seq} {ns}\n").as_bytes())
                .is_err()
            {
                std::process::exit(1);
            }
            next_tick = Instant::now() + args.interval;
        }
        let ready = wait(&listener, &conns, next_tick - Instant::now().min(next_tick));
        if ready[0] {
            accept_all(&listener, &mut conns);
        }
        let mut i = 0;
        conns.retain_mut(|c| {
            i += 1;
            !ready.get(i).copied().unwrap_or(false) || serve(c, &memory)
        });
    }
}
