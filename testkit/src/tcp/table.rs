//! The clients' table that `examples/migrate --workload tcp-server` prints
//! beside the usual cost table.

use super::run::TcpRow;

/// Prints what the clients saw, one line per migration.
pub fn print_clients(rows: &[TcpRow]) {
    println!(
        "{:<14} {:>8} {:>5} {:>8} {:>9} {:>11} {:>8} {:>6} {:>10} {:>9} {:>9}",
        "strategy",
        "lock",
        "conns",
        "answers",
        "stall ms",
        "downtime ms",
        "ratio",
        "errors",
        "reconnects",
        "counters",
        "checksums",
    );
    for r in rows {
        let c = &r.clients;
        println!(
            "{:<14} {:>8} {:>5} {:>8} {:>9.1} {:>11.1} {:>7.2}x {:>6} {:>10} {:>9} {:>9}",
            r.row.strategy,
            r.network_lock,
            c.connections,
            c.answers,
            c.longest_stall_ms,
            r.row.cost.downtime_ms,
            r.stall_to_downtime,
            c.errors,
            c.reconnects,
            if c.counters_continuous {
                "+1 each"
            } else {
                "BROKEN"
            },
            if c.checksums_ok { "ok" } else { "BAD" },
        );
    }
    if let Some(rto) = rows.first().and_then(|r| r.client_rto_min_ms) {
        println!("(the client's route to the service has rto_min {rto} ms)");
    }
}
