//! Receives an images directory sent by `criu::transfer::send_dir` on its
//! standard input into TARGET, as the receiving side of a migration does.
//! A separate process so that tests can SIGKILL a receiver mid-transfer.
//!
//! Usage: `criu-rs-receive-dir TARGET`

fn main() {
    let target = std::env::args_os()
        .nth(1)
        .expect("usage: criu-rs-receive-dir TARGET");
    let mut stdin = std::io::stdin().lock();
    let limits = criu::transfer::Limits::default();
    match criu::transfer::receive_dir(&mut stdin, target.as_ref(), &limits, None) {
        Ok(stats) => println!("received {} files, {} bytes", stats.files, stats.bytes),
        Err(e) => {
            eprintln!("criu-rs-receive-dir: {e}");
            std::process::exit(1);
        }
    }
}
