//! A server migrated with its clients connected: the request/answer
//! protocol the server binary (`criu-rs-tcp-server`) and the clients share,
//! the clients ([`client`]), the three-host topology and its address-move
//! hook ([`topology`]), the router's hold on the service's packets while
//! the server moves ([`hold`]), and one measured migration ([`run`]).
//!
//! The protocol: a request is 8 bytes (the client's own sequence number),
//! an answer 24 bytes, little-endian: the connection's counter (1, 2, 3...,
//! one per request), the index of one page of the server's memory, and that
//! page's checksum as the server computed it from its memory just then. The
//! memory holds `pattern(i)` in word `i`, so a client can check the
//! checksum without sharing anything else with the server.

pub mod client;
pub mod hold;
pub mod run;
pub mod table;
pub mod topology;

/// Bytes in a request.
pub const REQUEST_LEN: usize = 8;
/// Bytes in an answer.
pub const ANSWER_LEN: usize = 24;
/// Words (u64) in one page of the server's memory.
pub const PAGE_WORDS: usize = 512;
/// The port the server listens on, on the service address.
pub const SERVICE_PORT: u16 = 7070;

/// The value word `i` of the server's memory holds.
pub fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xC0FF_EE00_D15E_A5E5
}

/// The checksum of one page of words.
pub fn page_checksum(words: &[u64]) -> u64 {
    words.iter().fold(0xCBF2_9CE4_8422_2325u64, |acc, w| {
        (acc ^ w).wrapping_mul(0x0100_0000_01B3)
    })
}

/// The checksum page `page` must have in an intact server.
pub fn expected_page_checksum(page: u64) -> u64 {
    let start = page as usize * PAGE_WORDS;
    let words: Vec<u64> = (start..start + PAGE_WORDS).map(pattern).collect();
    page_checksum(&words)
}

/// Where the server binary is: `CRIU_RS_TCP_SERVER_BIN`, else as
/// [`crate::find_bin`] finds it.
pub fn server_bin() -> std::path::PathBuf {
    crate::find_bin("criu-rs-tcp-server", "CRIU_RS_TCP_SERVER_BIN")
}
