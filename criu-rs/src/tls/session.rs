//! A rustls session whose records are decrypted where they arrived.
//!
//! rustls's buffered API (`ConnectionCommon::read_tls`) reads into a
//! buffer of its own in 4 KiB steps: a `read` system call per 4 KiB, or,
//! with a read-ahead buffer in front of it (as the crate had), one more
//! copy of every byte. Through rustls's unbuffered API the crate owns
//! that buffer instead: the socket is read straight into it in large
//! pieces, rustls decrypts each record in place there, and only a partial
//! record at its end is moved to the front before the next read. Sending,
//! the records of a write go into one buffer that goes to the socket in
//! one call.
//!
//! What is still copied (rustls 0.23): each decrypted record's plaintext
//! into a `Vec` of rustls's (`ReadTraffic::next_record` hands out that
//! `Vec`, not the record in the buffer), and from there into the reader's
//! buffer; sending, each fragment into its record, which rustls seals in
//! a `Vec` of its own (without kTLS, some copy has to make the record),
//! and that record into our buffer: one copy more than the buffered API,
//! whose `Vec`s went to `writev` (see the stream's `SEND_BATCH`).

use std::io::{self, Read, Write};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, ReadTraffic, UnbufferedStatus,
};

/// The buffer the peer's records are read into and decrypted in: the
/// most read from the socket at once.
const INCOMING: usize = 256 << 10;

/// Below this much free space at the buffer's end, the unprocessed tail
/// (a partial record) is moved to the front before the next read, so
/// that reads stay large.
const MIN_READ: usize = 64 << 10;

/// What rustls's unbuffered connections of either side have in common.
trait Records {
    type Data;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Records for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Records for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// The connection of either side (rustls types them apart).
enum Conn {
    Client(UnbufferedClientConnection),
    Server(UnbufferedServerConnection),
}

/// Bytes to send: a buffer that only grows, so that it is zeroed once,
/// not before every encryption.
#[derive(Default)]
pub(super) struct Wire {
    buf: Vec<u8>,
    len: usize,
}

impl Wire {
    /// What waits to be sent.
    pub(super) fn filled(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends what `put` writes into the room it is given, offering more
    /// room while `put` answers that it needs more.
    fn append<E>(
        &mut self,
        guess: usize,
        mut put: impl FnMut(&mut [u8]) -> Result<usize, E>,
        needs: impl Fn(&E) -> Option<usize>,
    ) -> Result<(), rustls::Error> {
        let mut room = guess;
        loop {
            if self.buf.len() < self.len + room {
                self.buf.resize(self.len + room, 0);
            }
            match put(&mut self.buf[self.len..]) {
                Ok(n) => {
                    self.len += n;
                    return Ok(());
                }
                Err(e) => match needs(&e) {
                    Some(need) if need > room => room = need,
                    _ => return Err(rustls::Error::EncryptError),
                },
            }
        }
    }
}

fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encode_needs(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// Room for `clear` as records: each 16 KiB fragment gains a header, the
/// content type and the AEAD tag (22 bytes under TLS 1.3; 64 is ample).
fn sealed_size(clear: usize) -> usize {
    clear + (clear / (16 << 10) + 1) * 64
}

/// What the caller of [`Session::turn`] wants done.
enum Task<'a> {
    /// The handshake completed.
    Handshake,
    /// Plaintext into this buffer.
    Read(&'a mut [u8]),
    /// All the plaintext there is, onto `Session::pending`.
    Drain,
    /// This plaintext encrypted onto `Session::outgoing`.
    Encrypt(&'a [u8]),
    /// A `close_notify` onto `Session::outgoing`.
    CloseNotify,
}

/// What one turn of the session did.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// The task is done (a read: with this many bytes).
    Done(usize),
    /// Records were taken or encoded: turn again.
    Again,
    /// Records for the peer wait in `outgoing`: send them, turn again.
    Transmit,
    /// More bytes from the peer are needed.
    NeedInput,
    /// The peer sent its `close_notify`: all its data has been taken.
    PeerClosed,
}

/// What the handshake needs next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum HandshakeStep {
    /// It completed.
    Done,
    /// Send [`Session::outgoing`], then step again.
    Send,
    /// Read from the peer ([`Session::fill`]), then step again.
    Read,
    /// Step again.
    Again,
    /// The peer closed the session.
    Closed,
}

/// A TLS session and its buffers: records from the peer, records for it,
/// and plaintext taken from rustls that no reader has had yet.
pub(super) struct Session {
    conn: Conn,
    incoming: Box<[u8]>,
    /// `incoming[start..end]` is what rustls has not discarded yet.
    start: usize,
    end: usize,
    outgoing: Wire,
    pending: Vec<u8>,
    /// How much of `pending` was read.
    taken: usize,
    peer_closed: bool,
    /// What rustls refused, for good: it is not asked again (it would
    /// deframe the same bytes, and queue a second fatal alert).
    failed: Option<rustls::Error>,
}

/// A rustls error as an I/O error, as rustls's own streams return it.
fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Session {
    pub(super) fn client(conn: UnbufferedClientConnection) -> Session {
        Session::new(Conn::Client(conn))
    }

    pub(super) fn server(conn: UnbufferedServerConnection) -> Session {
        Session::new(Conn::Server(conn))
    }

    fn new(conn: Conn) -> Session {
        Session {
            conn,
            incoming: vec![0; INCOMING].into_boxed_slice(),
            start: 0,
            end: 0,
            outgoing: Wire::default(),
            pending: Vec::new(),
            taken: 0,
            peer_closed: false,
            failed: None,
        }
    }

    /// The peer's certificate chain, once the handshake has it.
    pub(super) fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        match &self.conn {
            Conn::Client(c) => c.peer_certificates(),
            Conn::Server(c) => c.peer_certificates(),
        }
    }

    fn is_handshaking(&self) -> bool {
        match &self.conn {
            Conn::Client(c) => c.is_handshaking(),
            Conn::Server(c) => c.is_handshaking(),
        }
    }

    /// Writes the records waiting to be sent to `to`.
    pub(super) fn send(&mut self, to: &mut impl Write) -> io::Result<()> {
        let sent = to.write_all(self.outgoing.filled());
        self.outgoing.clear();
        sent
    }

    /// Hands the records waiting to be sent over in `wire` (whose own
    /// contents are dropped), for a caller that sends them without the
    /// session.
    pub(super) fn swap_outgoing(&mut self, wire: &mut Wire) {
        wire.clear();
        std::mem::swap(&mut self.outgoing, wire);
    }

    /// One turn of rustls's state machine over the records received so
    /// far, towards `task`; once it failed, its error again.
    fn turn(&mut self, task: &mut Task<'_>) -> Result<Turn, rustls::Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let turn = self.step(task);
        if let Err(e) = &turn {
            self.failed = Some(e.clone());
        }
        turn
    }

    fn step(&mut self, task: &mut Task<'_>) -> Result<Turn, rustls::Error> {
        let incoming = &mut self.incoming[self.start..self.end];
        let (out, pending) = (&mut self.outgoing, &mut self.pending);
        let (discard, turn) = match &mut self.conn {
            Conn::Client(c) => turn_on(c, incoming, task, out, pending),
            Conn::Server(c) => turn_on(c, incoming, task, out, pending),
        };
        self.start += discard;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if matches!(turn, Ok(Turn::PeerClosed)) {
            self.peer_closed = true;
        }
        turn
    }

    /// Free space at the buffer's end for the peer's next bytes, after
    /// moving the unprocessed tail to the front if that space is short.
    fn room(&mut self) -> io::Result<&mut [u8]> {
        if self.incoming.len() - self.end < MIN_READ && self.start > 0 {
            self.incoming.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.incoming.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer sent a TLS message larger than the receive buffer",
            ));
        }
        Ok(&mut self.incoming[self.end..])
    }

    /// Reads once from `from` into the buffer; Ok(0) at its end.
    pub(super) fn fill(&mut self, from: &mut impl Read) -> io::Result<usize> {
        let room = self.room()?;
        let n = loop {
            match from.read(room) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                got => break got?,
            }
        };
        self.end += n;
        Ok(n)
    }

    /// One step of the handshake.
    pub(super) fn handshake_step(&mut self) -> Result<HandshakeStep, rustls::Error> {
        Ok(match self.turn(&mut Task::Handshake)? {
            // Both ways open (a server could write before it has read the
            // client's certificate, were half-RTT data allowed).
            Turn::Done(_) if self.is_handshaking() => HandshakeStep::Read,
            Turn::Done(_) => HandshakeStep::Done,
            Turn::Transmit => HandshakeStep::Send,
            Turn::NeedInput => HandshakeStep::Read,
            Turn::Again => HandshakeStep::Again,
            Turn::PeerClosed => HandshakeStep::Closed,
        })
    }

    /// After rustls refused what the peer sent: the alert it queued for
    /// the peer, if any, onto `outgoing`. rustls hands it out first on the
    /// next turn (one record: what it queued before was encoded before it
    /// read on); a second turn would deframe the refused bytes again.
    pub(super) fn queue_alert(&mut self) {
        let _ = self.step(&mut Task::Drain);
    }

    /// Plaintext from the peer into `out`, reading `from` as needed; 0
    /// once the peer has closed the session. A connection that ends
    /// without the peer's `close_notify` is an error (a truncation).
    pub(super) fn read_from(
        &mut self,
        from: &mut (impl Read + Write),
        out: &mut [u8],
    ) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.taken < self.pending.len() {
                return Ok(self.take_pending(out));
            }
            if self.peer_closed {
                return Ok(0);
            }
            match self.turn(&mut Task::Read(out)).map_err(tls_io)? {
                Turn::Done(n) => return Ok(n),
                Turn::Again | Turn::PeerClosed => {}
                Turn::Transmit => self.send(from)?,
                Turn::NeedInput => {
                    if self.fill(from)? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the peer closed the connection without a TLS close_notify \
                             (truncated)",
                        ));
                    }
                }
            }
        }
    }

    /// What was set aside of a record larger than a reader's buffer.
    fn take_pending(&mut self, out: &mut [u8]) -> usize {
        let rest = &self.pending[self.taken..];
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.taken += n;
        if self.taken == self.pending.len() {
            self.pending.clear();
            self.taken = 0;
        }
        n
    }

    /// Appends to `clear` all the plaintext the records received so far
    /// hold; true once the peer has closed the session.
    pub(super) fn collect(&mut self, clear: &mut Vec<u8>) -> io::Result<bool> {
        // Until rustls needs more input or the peer has closed.
        while let Turn::Again | Turn::Transmit | Turn::Done(_) =
            self.turn(&mut Task::Drain).map_err(tls_io)?
        {}
        if clear.is_empty() && self.taken == 0 {
            std::mem::swap(clear, &mut self.pending);
        } else {
            clear.extend_from_slice(&self.pending[self.taken..]);
        }
        self.pending.clear();
        self.taken = 0;
        Ok(self.peer_closed)
    }

    /// Decrypts `data` (read from the peer elsewhere), appending its
    /// plaintext to `clear`; true once the peer has closed the session.
    pub(super) fn open(&mut self, mut data: &[u8], clear: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            let room = self.room()?;
            let n = room.len().min(data.len());
            room[..n].copy_from_slice(&data[..n]);
            self.end += n;
            data = &data[n..];
            if self.collect(clear)? {
                return Ok(true);
            }
            if data.is_empty() {
                return Ok(false);
            }
        }
    }

    /// Encrypts `clear` onto the records waiting to be sent.
    pub(super) fn encrypt(&mut self, clear: &[u8]) -> io::Result<()> {
        self.until_done(&mut Task::Encrypt(clear))
    }

    /// Puts a `close_notify` onto the records waiting to be sent.
    pub(super) fn close_notify(&mut self) -> io::Result<()> {
        self.until_done(&mut Task::CloseNotify)
    }

    fn until_done(&mut self, task: &mut Task<'_>) -> io::Result<()> {
        loop {
            match self.turn(task).map_err(tls_io)? {
                Turn::Done(_) => return Ok(()),
                Turn::Again | Turn::Transmit | Turn::PeerClosed => {}
                Turn::NeedInput => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the TLS session cannot send yet",
                    ))
                }
            }
        }
    }
}

/// One turn of `conn` over `incoming`: what to discard from its front,
/// and what happened.
fn turn_on<C: Records>(
    conn: &mut C,
    incoming: &mut [u8],
    task: &mut Task<'_>,
    outgoing: &mut Wire,
    pending: &mut Vec<u8>,
) -> (usize, Result<Turn, rustls::Error>) {
    let UnbufferedStatus { discard, state } = conn.records(incoming);
    let (more, turn) = match state {
        Err(e) => (0, Err(e)),
        Ok(ConnectionState::ReadTraffic(t)) => deliver(t, task, pending),
        Ok(ConnectionState::EncodeTlsData(mut e)) => (
            0,
            outgoing
                .append(64, |room| e.encode(room), encode_needs)
                .map(|()| Turn::Again),
        ),
        Ok(ConnectionState::TransmitTlsData(t)) => {
            // `outgoing` is sent before rustls is asked anything else.
            t.done();
            (0, Ok(Turn::Transmit))
        }
        Ok(ConnectionState::WriteTraffic(mut w)) => (
            0,
            match task {
                Task::Handshake => Ok(Turn::Done(0)),
                Task::Read(_) | Task::Drain => Ok(Turn::NeedInput),
                Task::Encrypt(clear) => outgoing
                    .append(
                        sealed_size(clear.len()),
                        |room| w.encrypt(clear, room),
                        encrypt_needs,
                    )
                    .map(|()| Turn::Done(clear.len())),
                Task::CloseNotify => outgoing
                    .append(64, |room| w.queue_close_notify(room), encrypt_needs)
                    .map(|()| Turn::Done(0)),
            },
        ),
        Ok(ConnectionState::BlockedHandshake) => (
            0,
            match task {
                Task::Encrypt(_) | Task::CloseNotify => Err(rustls::Error::HandshakeNotComplete),
                _ => Ok(Turn::NeedInput),
            },
        ),
        Ok(ConnectionState::PeerClosed) => (0, Ok(Turn::PeerClosed)),
        Ok(ConnectionState::Closed) => (
            0,
            match task {
                Task::Encrypt(_) | Task::CloseNotify => Err(rustls::Error::General(
                    "the TLS session is closed both ways".into(),
                )),
                _ => Ok(Turn::PeerClosed),
            },
        ),
        Ok(_) => (
            0,
            Err(rustls::Error::General("unexpected TLS early data".into())),
        ),
    };
    (discard + more, turn)
}

/// Takes decrypted records: as many as fit whole into a read's buffer
/// (the first one in any case, its rest set aside in `pending`), or all
/// of them onto `pending` for any other task. Returns what more to
/// discard, and the turn.
fn deliver<D>(
    mut t: ReadTraffic<'_, '_, D>,
    task: &mut Task<'_>,
    pending: &mut Vec<u8>,
) -> (usize, Result<Turn, rustls::Error>) {
    let mut discard = 0;
    let Task::Read(out) = task else {
        while let Some(record) = t.next_record() {
            match record {
                Ok(r) => {
                    discard += r.discard;
                    pending.extend_from_slice(r.payload);
                }
                Err(e) => return (discard, Err(e)),
            }
        }
        return (discard, Ok(Turn::Again));
    };
    let mut n = 0;
    while let Some(len) = t.peek_len() {
        if n > 0 && len.get() > out.len() - n {
            break;
        }
        let r = match t.next_record() {
            Some(Ok(r)) => r,
            Some(Err(e)) => return (discard, Err(e)),
            None => break,
        };
        discard += r.discard;
        let fit = r.payload.len().min(out.len() - n);
        out[n..n + fit].copy_from_slice(&r.payload[..fit]);
        pending.extend_from_slice(&r.payload[fit..]);
        n += fit;
        if n == out.len() {
            break;
        }
    }
    (discard, Ok(if n > 0 { Turn::Done(n) } else { Turn::Again }))
}
