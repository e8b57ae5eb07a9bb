//! Acceptance 1 (issue 2), through the real binary: every framing delivers
//! byte-exact messages to the file sink, including a final unterminated
//! line at EOF, CRLF lines and messages split across many small reads;
//! oversize lines are dropped and counted while the connection goes on.
//! Every test ends with the accounting identity on the final stats line.

use crate::support;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::{Daemon, assert_balanced, assert_bytes, num, wait_file_len};

const WAIT: Duration = Duration::from_secs(20);

fn start(framing: &str, max_message_bytes: usize) -> Daemon {
    Conf::new()
        .set("server.framing", framing)
        .set("server.max_message_bytes", max_message_bytes)
        .set("limits.idle_timeout", "30s")
        .start()
}

/// Stops the daemon, asserts a clean exit, the accounting identity and the
/// expected counts; returns the final stats line.
fn stop_balanced(d: &mut Daemon, delivered: u64, dropped_oversize: u64) -> support::StatsLine {
    let status = d.stop(WAIT);
    assert!(status.success(), "exit {status:?}; log:\n{}", d.log_text());
    let s = d.final_stats();
    assert_balanced(&s);
    assert_eq!(num(&s, "delivered"), delivered, "{s:?}");
    assert_eq!(num(&s, "dropped_oversize"), dropped_oversize, "{s:?}");
    assert_eq!(num(&s, "queue_depth"), 0, "{s:?}");
    s
}

/// Sends `chunks` on one connection with TCP_NODELAY, one write each, then
/// closes. The small pause between writes is input pacing (so the daemon
/// sees many small reads), not synchronisation.
fn send_in_chunks(d: &Daemon, data: &[u8], sizes: &[usize]) {
    let mut s = TcpStream::connect(d.addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= data.len() {
            break;
        }
        let end = (at + size).min(data.len());
        s.write_all(&data[at..end]).expect("send chunk");
        at = end;
        std::thread::sleep(Duration::from_micros(300));
    }
}

#[test]
fn lines_deliver_byte_exact_messages_with_crlf_empty_lines_and_a_final_unterminated_line() {
    let mut d = start("lines", 1024);
    // Empty lines (LF or CRLF) are skipped; exactly one trailing CR goes;
    // a line starting with a digit is still a line here.
    d.send(b"first\r\n\n\r\nsecond line\n  spaces kept \t\n12 not a count\nbare cr\r\r\nlast without newline");
    let expected: &[u8] =
        b"first\nsecond line\n  spaces kept \t\n12 not a count\nbare cr\r\nlast without newline\n";
    let got = wait_file_len(&d.path("out.log"), expected.len(), WAIT);
    assert_bytes(expected, &got);
    let s = stop_balanced(&mut d, 6, 0);
    assert_eq!(num(&s, "received"), 6);
    assert_bytes(expected, &support::read(&d.path("out.log")));
}

#[test]
fn octet_counted_delivers_byte_exact_messages_with_embedded_newlines() {
    let mut d = start("octet-counted", 1024);
    let msgs: [&[u8]; 4] = [
        b"hello",
        b"two\nlines",
        b"crlf inside\r\n",
        b"<13>1 - x - - - tail",
    ];
    let mut wire = Vec::new();
    for m in msgs {
        wire.extend_from_slice(format!("{} ", m.len()).as_bytes());
        wire.extend_from_slice(m);
    }
    d.send(&wire);
    let expected: Vec<u8> = msgs.iter().flat_map(|m| [*m, b"\n"].concat()).collect();
    let got = wait_file_len(&d.path("out.log"), expected.len(), WAIT);
    assert_bytes(&expected, &got);
    stop_balanced(&mut d, 4, 0);
}

#[test]
fn auto_framing_decides_per_message() {
    let mut d = start("auto", 1024);
    // digit 1-9 first: octet-counted; anything else (also '0'): a line.
    d.send(b"5 abcde<14>1 a line\n10 two\nlines!0 leading zero is a line\r\nplain\n3 end");
    let expected: &[u8] =
        b"abcde\n<14>1 a line\ntwo\nlines!\n0 leading zero is a line\nplain\nend\n";
    let got = wait_file_len(&d.path("out.log"), expected.len(), WAIT);
    assert_bytes(expected, &got);
    stop_balanced(&mut d, 6, 0);
}

#[test]
fn messages_split_across_many_small_writes_arrive_whole() {
    for framing in ["lines", "octet-counted", "auto"] {
        let mut d = start(framing, 1024);
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for i in 0..60 {
            let msg = format!(
                "<13>1 message {i:03} of the {framing} split test {}",
                "x".repeat(i)
            );
            let octet = framing == "octet-counted" || (framing == "auto" && i % 2 == 0);
            if octet {
                wire.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
            } else if i % 3 == 0 {
                wire.extend_from_slice(format!("{msg}\r\n").as_bytes());
            } else {
                wire.extend_from_slice(format!("{msg}\n").as_bytes());
            }
            expected.extend_from_slice(format!("{msg}\n").as_bytes());
        }
        send_in_chunks(&d, &wire, &[1, 2, 3, 5, 7, 1, 11, 2]);
        let got = wait_file_len(&d.path("out.log"), expected.len(), WAIT);
        assert_bytes(&expected, &got);
        stop_balanced(&mut d, 60, 0);
    }
}

#[test]
fn oversize_lines_are_dropped_and_counted_while_the_connection_goes_on() {
    let mut d = start("lines", 64);
    let out = d.path("out.log");
    let mut s = TcpStream::connect(d.addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    // Exactly at the cap passes; one byte over is dropped, as is a line far
    // longer than any read buffer, sent in pieces.
    let at_cap = "a".repeat(64);
    s.write_all(format!("before\n{at_cap}\n{}\n", "b".repeat(65)).as_bytes())
        .expect("send");
    let huge = vec![b'c'; 300 << 10];
    for piece in huge.chunks(10_000) {
        s.write_all(piece).expect("send oversize piece");
    }
    s.write_all(b"\nafter\n").expect("send");
    let expected = format!("before\n{at_cap}\nafter\n");
    let got = wait_file_len(&out, expected.len(), WAIT);
    assert_bytes(expected.as_bytes(), &got);
    assert!(
        d.wait_stats(WAIT, |st| num(st, "dropped_oversize") == 2)
            .is_some(),
        "dropped_oversize never reached 2; log:\n{}",
        d.log_text()
    );
    assert!(
        d.wait_log(WAIT, |l| l.contains("oversize message dropped"))
            .is_some()
    );

    // Same connection, later: still served.
    s.write_all(b"later on the same connection\n")
        .expect("send after oversize");
    let expected = format!("{expected}later on the same connection\n");
    let got = wait_file_len(&out, expected.len(), WAIT);
    assert_bytes(expected.as_bytes(), &got);
    drop(s);

    let st = stop_balanced(&mut d, 4, 2);
    assert_eq!(num(&st, "received"), 6);
    assert_eq!(num(&st, "conns_total"), 1);
    assert_eq!(num(&st, "closed_framing"), 0);
}

#[test]
fn a_bad_octet_count_closes_only_that_connection_and_is_counted() {
    let mut d = start("octet-counted", 64);
    let mut bad = d.connect();
    bad.write_all(b"3 okx99999 too long").expect("send");
    support::await_close(&mut bad, WAIT);
    d.send(b"4 good");
    let expected: &[u8] = b"okx\ngood\n";
    let got = wait_file_len(&d.path("out.log"), expected.len(), WAIT);
    assert_bytes(expected, &got);
    let st = stop_balanced(&mut d, 2, 0);
    assert_eq!(num(&st, "closed_framing"), 1);
}
