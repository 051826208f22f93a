//! A server migrated with 8 clients connected: for each strategy, no client
//! sees an error, every counter goes on by one, and nothing is left behind
//! (namespaces, the service address on the source, firewall rules, the
//! router's hold on the service's packets). Then
//! the two bad paths: a restore that fails (the address goes back, the
//! source resumes, the clients see only a stall), and a lock that cannot
//! be taken (a clear error, nothing frozen).

use std::path::Path;

use criu::migrate::{SourceState, Step, Strategy};
use criu_testkit::tcp::run::{migrate_server, TcpOutcome, TcpSettings};

/// Small memory keeps each migration well under a second.
const MIB: usize = 4;

fn assert_nothing_left(o: &TcpOutcome) {
    assert_no_rules_nor_hold(o);
    for ns in &o.namespaces {
        assert!(
            !Path::new(&format!("/run/netns/{ns}")).exists(),
            "namespace {ns} left behind"
        );
    }
}

fn migrates_with_clients(strategy: Strategy) {
    let o = migrate_server(&TcpSettings::new(strategy, MIB)).expect("the run");
    let row = o
        .row
        .as_ref()
        .unwrap_or_else(|| panic!("migration failed: {:?}", o.error));
    assert_eq!(o.clients.connections, 8);
    assert!(o.clients.clean(), "the clients saw {:?}", o.clients);
    assert!(row.row.continued, "the server's ticks did not go on");
    assert_ne!(row.row.source_netns, row.row.dest_netns);
    assert_eq!(
        o.service_on,
        (false, true),
        "the service address is not (only) on b"
    );
    assert_nothing_left(&o);
}

/// No firewall rule on `a` or `b`, and the router holds nothing back.
fn assert_no_rules_nor_hold(o: &TcpOutcome) {
    assert!(
        o.rules_left.is_empty(),
        "firewall rules left: {:?}",
        o.rules_left
    );
    assert!(!o.hold_left, "the router's hold on the service was left");
}

#[test]
fn stop_and_copy_keeps_the_clients_connected() {
    migrates_with_clients(Strategy::StopAndCopy);
}

#[test]
fn page_server_keeps_the_clients_connected() {
    migrates_with_clients(Strategy::PageServer);
}

#[test]
fn lazy_keeps_the_clients_connected() {
    migrates_with_clients(Strategy::Lazy);
}

#[test]
fn a_failed_restore_moves_the_address_back_and_the_source_serves_on() {
    let mut s = TcpSettings::new(Strategy::StopAndCopy, MIB);
    s.fail_restore = true;
    let o = migrate_server(&s).expect("the run");
    let err = o.error.as_ref().expect("the migration must fail");
    let m = err.migration_error().expect("a migration error");
    assert_eq!(m.step(), Step::Restore, "{err}");
    assert_eq!(m.source_state(), SourceState::Resumed, "{err}");
    assert!(!o.served_from_b, "the source did not run on in a");
    assert!(o.clients.clean(), "the clients saw {:?}", o.clients);
    assert_eq!(
        o.service_on,
        (true, false),
        "the service address did not go back to a"
    );
    assert_no_rules_nor_hold(&o);
}

#[test]
fn no_lock_is_a_clear_error_before_anything_freezes() {
    let mut s = TcpSettings::new(Strategy::StopAndCopy, MIB);
    s.break_lock = true;
    let o = migrate_server(&s).expect("the run");
    let err = o.error.as_ref().expect("the migration must fail");
    let m = err.migration_error().expect("a migration error");
    assert_eq!(m.step(), Step::Connections, "the network lock: {err}");
    assert_eq!(
        m.source_state(),
        SourceState::Untouched,
        "nothing was frozen: {err}"
    );
    assert!(!o.served_from_b);
    assert!(o.clients.clean(), "the clients saw {:?}", o.clients);
    assert_eq!(o.service_on, (true, false));
    assert_no_rules_nor_hold(&o);
}

#[test]
fn criu_s_own_lock_methods_work_and_leave_no_rules() {
    for lock in [criu::NetworkLock::Iptables, criu::NetworkLock::Nftables] {
        let mut s = TcpSettings::new(Strategy::StopAndCopy, MIB);
        s.network_lock = lock;
        let o = migrate_server(&s).expect("the run");
        assert!(o.row.is_some(), "{lock:?}: migration failed: {:?}", o.error);
        assert!(
            o.clients.clean(),
            "{lock:?}: the clients saw {:?}",
            o.clients
        );
        assert_eq!(o.service_on, (false, true), "{lock:?}");
        assert_nothing_left(&o);
    }
}

/// After `unlock`: no hold on the router, no lock on the source.
fn assert_no_hold_nor_lock(hosts: &criu_testkit::tcp::topology::ThreeHosts) {
    assert!(
        !hosts.hold_left().expect("the router's routes"),
        "hold left"
    );
    let rules = criu_testkit::tcp::topology::ThreeHosts::firewall_rules(&hosts.pair.a);
    assert!(rules.unwrap().is_empty());
}

#[test]
fn the_router_holds_from_lock_until_unlock() {
    use criu::migrate::AddressMove;
    use criu_testkit::tcp::topology::ThreeHosts;
    let hosts = ThreeHosts::new(None).expect("the hosts");
    let hook = hosts.address_move();
    assert!(!hosts.hold_left().expect("the router's routes"));
    hook.lock().expect("lock");
    assert!(hosts.hold_left().expect("the router's routes"), "no hold");
    hook.unlock().expect("unlock");
    assert_no_hold_nor_lock(&hosts);
    hook.lock().expect("lock again");
    drop(hook);
    assert!(
        !hosts.hold_left().expect("the router's routes"),
        "a dropped hook left its hold"
    );
}

/// What lets the destination go without a lock of its own: while the
/// router holds, no packet for the service address reaches it, even with
/// the address on it and nothing listening (its kernel would answer a
/// connection attempt with a reset: "connection refused"). After the
/// release the same attempt is refused, so the packets do reach it then.
#[test]
fn while_the_router_holds_nothing_reaches_the_destination() {
    use criu::migrate::AddressMove;
    use criu_testkit::tcp::topology::ThreeHosts;
    use criu_testkit::tcp::SERVICE_PORT;
    use std::io::ErrorKind;
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;
    let hosts = ThreeHosts::new(None).expect("the hosts");
    let hook = hosts.address_move();
    let service = SocketAddr::new(hosts.service.into(), SERVICE_PORT);
    let connect = || {
        hosts
            .client
            .run(|| TcpStream::connect_timeout(&service, Duration::from_millis(400)))
            .expect("a thread in the client's namespace")
    };
    hook.lock().expect("lock");
    hook.move_to_dest().expect("move_to_dest");
    assert_eq!(
        ThreeHosts::addresses(&hosts.pair.b).unwrap(),
        [hosts.pair.b.addr, hosts.service]
    );
    assert!(
        ThreeHosts::firewall_rules(&hosts.pair.b)
            .unwrap()
            .is_empty(),
        "a lock on b"
    );
    let held = connect().expect_err("nothing listens on b");
    assert_eq!(
        held.kind(),
        ErrorKind::TimedOut,
        "reached b while held: {held}"
    );
    hook.announce().expect("announce");
    let released = connect().expect_err("nothing listens on b");
    assert_eq!(released.kind(), ErrorKind::ConnectionRefused, "{released}");
    hook.unlock().expect("unlock");
    assert_no_hold_nor_lock(&hosts);
}
