//! The nats sink's settings turned into what async-nats takes: the
//! client's connect options (IP-literal servers only, reconnects paced by
//! the sinks' one back-off), the JetStream context (ack timeout, in-flight
//! bound) and the stream's config. Connecting is the caller's loop
//! (`super::connect`); this file only says how.

use std::time::Duration;

use async_nats::jetstream;

use crate::config::NatsSettings;
use crate::sink::backoff::Backoff;

/// The client's options: IP-literal servers only, reconnecting for ever
/// on the sinks' back-off schedule.
fn connect_options(settings: &NatsSettings) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name("floodwall")
        .connection_timeout(settings.connect_timeout)
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Other cluster members' URLs would be host names to resolve on a
        // blocking pool thread; the configured list is the list.
        .ignore_discovered_servers()
        .reconnect_delay_callback(|attempts| Backoff::after(attempts.saturating_add(1)))
}

/// The JetStream context over `client`: acks time out after
/// `ack_timeout`, and the client's own in-flight bound is above ours.
fn context(settings: &NatsSettings, client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(settings.ack_timeout)
        // Our own window is the bound; the client's must never be the
        // one that waits.
        .max_ack_inflight(settings.max_in_flight + 1)
        .build(client)
}

/// The stream floodwall creates when it is missing: the subject only, one
/// replica (an operator who wants more creates it first).
fn stream_config(settings: &NatsSettings) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: settings.stream.clone(),
        subjects: vec![settings.subject.clone()],
        num_replicas: 1,
        ..Default::default()
    }
}

/// The client, and the stream's duplicate window (as the server has it).
pub(super) async fn try_connect(
    settings: &NatsSettings,
) -> Result<(jetstream::Context, Duration), String> {
    let client = connect_options(settings)
        .connect(settings.servers.clone())
        .await
        .map_err(|e| e.to_string())?;
    let js = context(settings, client);
    match tokio::time::timeout(
        settings.ack_timeout + settings.connect_timeout,
        js.get_or_create_stream(stream_config(settings)),
    )
    .await
    {
        Ok(Ok(stream)) => Ok((js, stream.cached_info().config.duplicate_window)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out waiting for the stream".to_string()),
    }
}
