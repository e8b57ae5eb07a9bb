//! Acceptance 4 (issue 2): at `max_connections`, policy "wait" leaves new
//! connections in the kernel backlog, unserved until a slot frees, and
//! then serves them; policy "reject" accepts and closes them at once,
//! counted in `conns_rejected`, while admitted connections go on.

use crate::support;

use std::io::Write;
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::{
    Daemon, assert_balanced, await_close, num, wait_file_contains, wait_file_len,
};

const WAIT: Duration = Duration::from_secs(20);

fn start(policy: &str) -> Daemon {
    Conf::new()
        .set("server.framing", "lines")
        .set("limits.max_connections", 1)
        .set("limits.on_connection_limit", policy)
        .set("limits.idle_timeout", "30s")
        .start()
}

#[test]
fn wait_policy_serves_an_extra_connection_only_once_a_slot_frees() {
    let mut d = start("wait");
    let out = d.path("out.log");
    let mut first = d.connect();
    first.write_all(b"first\n").expect("send");
    assert!(wait_file_contains(&out, b"first\n", WAIT));

    // The kernel completes the handshake (backlog); the daemon does not
    // take it while the only permit is held.
    let mut second = d.connect();
    second.write_all(b"second\n").expect("send");
    // Three stats periods (about 300 ms) later it is still not admitted.
    for _ in 0..3 {
        let st = d
            .wait_stats(WAIT, |_| true)
            .expect("stats lines keep coming");
        assert_eq!(
            num(&st, "conns_total"),
            1,
            "second connection admitted early: {st:?}"
        );
        assert_eq!(num(&st, "received"), 1, "{st:?}");
        assert_eq!(num(&st, "conns_rejected"), 0, "{st:?}");
    }
    assert_eq!(support::read(&out), b"first\n");

    // A slot frees: the waiting connection is served, nothing was lost.
    drop(first);
    assert!(
        wait_file_contains(&out, b"second\n", WAIT),
        "waiting connection never served; log:\n{}",
        d.log_text()
    );
    second.write_all(b"second again\n").expect("send");
    drop(second);
    let got = wait_file_len(&out, b"first\nsecond\nsecond again\n".len(), WAIT);
    support::assert_bytes(b"first\nsecond\nsecond again\n", &got);

    let status = d.stop(WAIT);
    assert!(status.success());
    let s = d.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "conns_total"), 2);
    assert_eq!(num(&s, "conns_rejected"), 0);
    assert_eq!(num(&s, "delivered"), 3);
}

#[test]
fn reject_policy_closes_extra_connections_at_once_and_counts_them() {
    let mut d = start("reject");
    let out = d.path("out.log");
    let mut first = d.connect();
    first.write_all(b"admitted\n").expect("send");
    assert!(wait_file_contains(&out, b"admitted\n", WAIT));

    for _ in 0..3 {
        let mut extra = d.connect();
        // Its data may be unread when it is closed: EOF or a reset.
        let _ = extra.write_all(b"rejected\n");
        await_close(&mut extra, WAIT);
    }
    let counted = d.wait_stats(WAIT, |s| num(s, "conns_rejected") == 3);
    let counted =
        counted.unwrap_or_else(|| panic!("rejections not counted; log:\n{}", d.log_text()));
    assert_eq!(num(&counted, "conns_total"), 1, "{counted:?}");
    assert!(
        d.wait_log(WAIT, |l| l.contains("connection limit reached, rejected"))
            .is_some()
    );

    // The admitted connection is untouched; once it is gone, a new one
    // gets the permit.
    first.write_all(b"still admitted\n").expect("send");
    assert!(wait_file_contains(&out, b"still admitted\n", WAIT));
    drop(first);
    assert!(
        d.wait_stats(WAIT, |s| num(s, "conns_active") == 0)
            .is_some()
    );
    d.send(b"next\n");
    let got = wait_file_len(&out, b"admitted\nstill admitted\nnext\n".len(), WAIT);
    support::assert_bytes(b"admitted\nstill admitted\nnext\n", &got);

    let status = d.stop(WAIT);
    assert!(status.success());
    let s = d.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "conns_rejected"), 3);
    assert_eq!(num(&s, "conns_total"), 2);
    assert_eq!(
        num(&s, "received"),
        3,
        "a rejected connection's data was read: {s:?}"
    );
}
