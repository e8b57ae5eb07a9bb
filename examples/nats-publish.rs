//! A bare async-nats JetStream publisher, the yardstick for the nats
//! sink's throughput (bench/RESULTS.md): publishes COUNT messages of SIZE
//! bytes to SUBJECT with at most WINDOW awaiting acks, acks completing out
//! of order, on one current-thread runtime (as floodwall's sink does), and
//! prints acknowledged messages per second. With `headers`, each message
//! also carries a unique Nats-Msg-Id and a Floodwall-Peer header, shaped
//! as the sink's are (the stream then checks every id for duplicates).
//!
//! cargo run --release --example nats-publish -- URL[,URL...] SUBJECT COUNT SIZE WINDOW [headers]

use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (urls, subject, count, size, window, headers) = match &args[..] {
        [u, s, c, z, w] => (u, s, c, z, w, false),
        [u, s, c, z, w, h] if h == "headers" => (u, s, c, z, w, true),
        _ => {
            eprintln!("usage: nats-publish URL[,URL...] SUBJECT COUNT SIZE WINDOW [headers]");
            std::process::exit(2);
        }
    };
    let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
    let (count, size, window): (usize, usize, usize) =
        (count.parse()?, size.parse()?, window.parse()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = async_nats::ConnectOptions::new()
            .ignore_discovered_servers()
            .connect(urls)
            .await?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .max_ack_inflight(window + 1)
            .build(client);
        let payload = bytes::Bytes::from(vec![b'x'; size]);
        // Ids shaped as the sink's ("<pid><start nanos>-<worker>-<seq>",
        // about 30 bytes): the stream keeps every id of its duplicate
        // window, so their length is part of the servers' cost.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let prefix = format!("{:x}{:x}-0-", std::process::id(), nanos);
        let start = Instant::now();
        let mut in_flight = FuturesUnordered::new();
        let (mut sent, mut acked) = (0usize, 0usize);
        while acked < count {
            while sent < count && in_flight.len() < window {
                let ack = if headers {
                    let m = async_nats::jetstream::message::PublishMessage::build()
                        .payload(payload.clone())
                        .message_id(format!("{prefix}{sent}"))
                        .header("Floodwall-Peer", "127.0.0.1:40000");
                    js.send_publish(subject.clone(), m).await?
                } else {
                    js.publish(subject.clone(), payload.clone()).await?
                };
                in_flight.push(ack.into_future());
                sent += 1;
            }
            match in_flight.next().await {
                Some(Ok(_)) => acked += 1,
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "bare async-nats: acked={acked} secs={secs:.2} msgs_per_s={:.0} window={window} headers={headers}",
            acked as f64 / secs
        );
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
