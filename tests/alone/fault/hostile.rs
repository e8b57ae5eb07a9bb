//! Scenario 4, hostile bytes: random garbage, NUL bytes, oversize lines,
//! octet counts that are huge, negative, non-numeric, zero-led or longer
//! than the data, abrupt resets (SO_LINGER 0) mid-message and half-closed
//! clients, each on its own connection while a well-behaved neighbour
//! keeps sending. The daemon must survive, the neighbour's messages must
//! reach the file sink complete, in order and byte-exact, and every case
//! must land in its own counter (dropped_oversize, closed_framing,
//! closed_error, closed_idle) with the books balanced.

use crate::support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::support::config::Conf;
use crate::support::{Daemon, StatsLine, assert_balanced, num, read};
use floodwall::config::Framing;
use floodwall::conn::framing::{Decoder, Frame};

const MAX: usize = 1024;

/// A neighbour sending numbered messages every 2 ms until stopped;
/// returns what it sent, as the file sink must show it.
struct Neighbour {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<u8>>,
}

impl Neighbour {
    fn start(addr: SocketAddr, octet: bool) -> Neighbour {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("neighbour connect");
            let mut expected = Vec::new();
            // Bounded: at most 20,000 messages (40 s) even if never stopped.
            for i in 0..20_000 {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let msg = format!("neighbour {i:05} keeps talking");
                let frame = if octet {
                    format!("{} {msg}", msg.len())
                } else {
                    format!("{msg}\n")
                };
                s.write_all(frame.as_bytes())
                    .expect("the neighbour's connection must stay up");
                expected.extend_from_slice(msg.as_bytes());
                expected.push(b'\n');
                thread::sleep(Duration::from_millis(2));
            }
            expected
        });
        Neighbour { stop, handle }
    }

    fn finish(self) -> Vec<u8> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("neighbour")
    }
}

/// The neighbour's lines, in file order.
fn neighbour_lines(file: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in file.split(|&b| b == b'\n') {
        if line.starts_with(b"neighbour ") {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Deterministic garbage (xorshift64).
fn garbage(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// What the daemon must make of `data` sent on one connection then closed:
/// (messages, oversize count, framing error?). The decoder is the oracle;
/// its own split-invariance is proptested in src/conn/framing.rs.
fn oracle(framing: Framing, data: &[u8]) -> (Vec<Vec<u8>>, u64, bool) {
    let mut dec = Decoder::new(framing, MAX);
    let (mut msgs, mut oversize, mut pos) = (Vec::new(), 0, 0);
    loop {
        match dec.decode(&data[pos..]) {
            Ok((Frame::Message(r), used)) => {
                msgs.push(data[pos + r.start..pos + r.end].to_vec());
                pos += used;
            }
            Ok((Frame::Oversize, used)) => {
                oversize += 1;
                pos += used;
            }
            Ok((Frame::NeedMore, used)) => {
                pos += used;
                break;
            }
            Err(_) => return (msgs, oversize, true),
        }
    }
    match dec.finish(&data[pos..]) {
        Ok(Some(Frame::Message(r))) => msgs.push(data[pos + r.start..pos + r.end].to_vec()),
        Ok(Some(_)) => oversize += 1,
        Ok(None) => {}
        // An octet frame cut short at EOF is a framing error too.
        Err(_) => return (msgs, oversize, true),
    }
    (msgs, oversize, false)
}

/// Sends `data`, closes, and waits until the daemon has closed its side.
fn send_and_wait_closed(addr: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect(addr).expect("connect");
    // The daemon may close first (framing error): then writing fails.
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    wait_closed(&mut s);
}

/// Reads until EOF or reset: the daemon has closed the connection.
fn wait_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the daemon did not close the connection: {e}"),
        }
    }
}

/// Sends `data`, waits until `proof` is in the file (so the daemon has
/// read the connection), then resets it: SO_LINGER 0 and close.
fn reset_after(addr: SocketAddr, data: &[u8], out: &std::path::Path, proof: &[u8]) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(data).expect("send");
    assert!(
        support::wait_until(Duration::from_secs(10), || contains(&read(out), proof)),
        "{:?} never delivered",
        String::from_utf8_lossy(proof)
    );
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
    drop(s);
}

/// Stops the daemon cleanly and returns its final stats line.
fn stop(daemon: &mut Daemon) -> StatsLine {
    assert!(
        daemon
            .wait_stats(Duration::from_secs(10), |s| num(s, "conns_active") == 0)
            .is_some(),
        "connections left open; log:\n{}",
        daemon.log_text()
    );
    let status = daemon.stop(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", daemon.log_text());
    let last = daemon.final_stats();
    assert_balanced(&last);
    last
}

#[test]
fn hostile_lines_are_counted_and_neighbours_are_unaffected() {
    let _machine = crate::support::machine_shared();
    let mut daemon = Conf::new()
        .set("server.framing", "auto")
        .set("server.max_message_bytes", MAX)
        .start();
    let out = daemon.path("out.log");
    let addr = daemon.addr;
    let neighbour = Neighbour::start(addr, false);

    // NUL bytes are data like any other.
    send_and_wait_closed(addr, b"nul\0inside\n\0\0\0\n");
    // An oversize line is dropped; the connection goes on.
    let mut oversize = vec![b'y'; 5 * MAX];
    oversize.extend_from_slice(b"\nafter the oversize line\n");
    send_and_wait_closed(addr, &oversize);
    // Under auto framing a leading '-' makes a line, a digit a count.
    send_and_wait_closed(
        addr,
        b"-5 negative is a line in auto\n20 counted in auto mode",
    );
    // Garbage: whatever the decoder makes of it, and nothing else.
    let mut expected_msgs = 8u64;
    let (mut g_oversize, mut g_framing) = (0, 0);
    let mut g_bytes = 0;
    for seed in 1..=8u64 {
        let data = garbage(16 << 10, seed * 0x9E37_79B9_7F4A_7C15);
        let (msgs, over, err) = oracle(Framing::Auto, &data);
        expected_msgs += msgs.len() as u64;
        g_bytes += msgs.iter().map(|m| m.len() + 1).sum::<usize>();
        g_oversize += over;
        g_framing += u64::from(err);
        send_and_wait_closed(addr, &data);
    }
    // Reset mid-message: the partial message is not a message.
    reset_after(
        addr,
        b"complete before the reset\npartial mid-mess",
        &out,
        b"complete before the reset\n",
    );
    // Half-closed: the final unterminated line is delivered, the daemon
    // closes its side.
    let mut half = TcpStream::connect(addr).expect("connect");
    half.write_all(b"half closed line\nhalf closed tail")
        .expect("send");
    half.shutdown(Shutdown::Write).expect("shutdown write");
    wait_closed(&mut half);

    // The neighbour keeps going after the hostile cases, too.
    assert!(support::wait_until(Duration::from_secs(10), || {
        neighbour_lines(&read(&out))
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            >= 100
    }));
    let sent = neighbour.finish();
    assert!(
        support::wait_until(Duration::from_secs(10), || neighbour_lines(&read(&out))
            == sent),
        "neighbour's messages not delivered intact"
    );
    let last = stop(&mut daemon);
    let file = read(&out);
    assert_eq!(neighbour_lines(&file), sent, "neighbour's messages changed");
    for m in [
        &b"nul\0inside\n"[..],
        b"\n\0\0\0\n",
        b"\nafter the oversize line\n",
        b"\n-5 negative is a line in auto\n",
        b"\ncounted in auto mode\n",
        b"\ncomplete before the reset\n",
        b"\nhalf closed line\n",
        b"\nhalf closed tail\n",
    ] {
        assert!(
            contains(&file, m),
            "{:?} missing",
            String::from_utf8_lossy(m)
        );
    }
    assert!(!contains(&file, b"partial mid-mess"));
    let neighbour_msgs = sent.iter().filter(|&&b| b == b'\n').count() as u64;
    let fixed_bytes = "nul\0inside\n\0\0\0\nafter the oversize line\n-5 negative is a line in auto\n\
                       counted in auto mode\ncomplete before the reset\nhalf closed line\nhalf closed tail\n"
        .len();
    assert_eq!(
        file.len(),
        sent.len() + g_bytes + fixed_bytes,
        "the file holds something unexpected"
    );
    assert_eq!(
        num(&last, "received"),
        neighbour_msgs + expected_msgs + 1 + g_oversize,
        "{last:?}"
    );
    assert_eq!(num(&last, "dropped_oversize"), 1 + g_oversize, "{last:?}");
    assert_eq!(num(&last, "closed_framing"), g_framing, "{last:?}");
    assert_eq!(num(&last, "closed_error"), 1, "{last:?}");
    assert_eq!(num(&last, "closed_idle"), 0, "{last:?}");
    assert_eq!(num(&last, "dropped_send_timeout"), 0, "{last:?}");
    assert_eq!(
        num(&last, "delivered"),
        neighbour_msgs + expected_msgs,
        "{last:?}"
    );
    eprintln!(
        "FIGURES hostile auto: neighbour_messages={neighbour_msgs} garbage_bytes={} garbage_framing_errors={g_framing} \
         received={} delivered={} dropped_oversize={} closed_framing={} closed_error={}",
        8 * (16 << 10),
        num(&last, "received"),
        num(&last, "delivered"),
        num(&last, "dropped_oversize"),
        num(&last, "closed_framing"),
        num(&last, "closed_error"),
    );
}

#[test]
fn bad_octet_counts_close_only_their_connection() {
    let _machine = crate::support::machine_shared();
    let mut daemon = Conf::new()
        .set("server.framing", "octet-counted")
        .set("server.max_message_bytes", MAX)
        .set("limits.idle_timeout", "1s")
        .start();
    let out = daemon.path("out.log");
    let addr = daemon.addr;
    let neighbour = Neighbour::start(addr, true);

    for bad in [
        &b"99999999999 huge"[..],
        b"1025 one over max_message_bytes",
        b"-5 hello",
        b"abc hello",
        b"05 zero-led",
        b" 5 hello",
        b"10 before bad12:00 x",
    ] {
        send_and_wait_closed(addr, bad);
    }
    // Longer than the data, then EOF: not a message; a counted framing
    // error (frame cut short).
    send_and_wait_closed(addr, b"100 short");
    // Longer than the data, then silence: closed idle.
    let mut stuck = TcpStream::connect(addr).expect("connect");
    stuck.write_all(b"100 short and stuck").expect("send");
    wait_closed(&mut stuck);
    // Reset in the middle of a frame.
    reset_after(
        addr,
        b"14 before a reset20 partial",
        &out,
        b"before a reset\n",
    );

    let sent = neighbour.finish();
    assert!(
        support::wait_until(Duration::from_secs(10), || neighbour_lines(&read(&out))
            == sent),
        "neighbour's messages not delivered intact"
    );
    let last = stop(&mut daemon);
    let file = read(&out);
    assert_eq!(neighbour_lines(&file), sent);
    let neighbour_msgs = sent.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(
        file.len(),
        sent.len() + "before bad\nbefore a reset\n".len()
    );
    assert_eq!(num(&last, "received"), neighbour_msgs + 2, "{last:?}");
    assert_eq!(num(&last, "delivered"), neighbour_msgs + 2, "{last:?}");
    assert_eq!(num(&last, "closed_framing"), 8, "{last:?}");
    assert_eq!(num(&last, "closed_idle"), 1, "{last:?}");
    assert_eq!(num(&last, "closed_error"), 1, "{last:?}");
    assert_eq!(num(&last, "dropped_oversize"), 0, "{last:?}");
    eprintln!(
        "FIGURES hostile octet: neighbour_messages={neighbour_msgs} closed_framing={} closed_idle={} closed_error={}",
        num(&last, "closed_framing"),
        num(&last, "closed_idle"),
        num(&last, "closed_error"),
    );
}
