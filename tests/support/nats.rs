//! A real nats-server (Debian's 2.9, JetStream on) for the nats sink
//! tests: one server or a 3-node cluster on loopback, every port chosen
//! by the server itself (`-1`) and read back from its log; and a small
//! async-nats client (its own current-thread runtime) to create streams
//! and read them back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;

use super::wait_until;

pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Fails (never skips) when nats-server is not installed.
pub fn require_nats() {
    assert!(
        Path::new(NATS_SERVER).is_file(),
        "{NATS_SERVER} not found: run `bash scripts/install-peers.sh` (needs root) to install the test peers"
    );
}

/// One running nats-server; killed when dropped.
pub struct NatsServer {
    pub name: String,
    child: Option<Child>,
    pub client: SocketAddr,
    pub monitor: SocketAddr,
    /// The cluster (route) port, when clustered.
    pub route: Option<SocketAddr>,
    conf: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl NatsServer {
    /// A single JetStream server on a port of its choosing.
    pub fn start(dir: &Path, name: &str) -> NatsServer {
        NatsServer::start_with(dir, name, None, None)
    }

    /// A client port nats-server could bind and nothing listens on now:
    /// for a server that is away when floodwall starts and comes up there
    /// later ([`NatsServer::start_with`] with the port).
    pub fn vacated_port(dir: &Path, name: &str) -> u16 {
        let mut nats = NatsServer::start(dir, name);
        let port = nats.client.port();
        nats.kill();
        port
    }

    /// `port`: the client port (None: any); `cluster`: Some((own route
    /// port, every node's route address)) to join a cluster named "fw".
    pub fn start_with(
        dir: &Path,
        name: &str,
        port: Option<u16>,
        cluster: Option<(u16, &[SocketAddr])>,
    ) -> NatsServer {
        require_nats();
        let store = dir.join(format!("store-{name}"));
        let mut conf = format!(
            "server_name: {name}\nhost: 127.0.0.1\nport: {}\nhttp: \"127.0.0.1:-1\"\njetstream {{ store_dir: {:?} }}\n",
            port.map_or(-1, i32::from),
            store.display().to_string()
        );
        if let Some((own, routes)) = cluster {
            let routes: Vec<String> = routes.iter().map(|r| format!("nats-route://{r}")).collect();
            conf.push_str(&format!(
                "cluster {{ name: fw\n host: 127.0.0.1\n port: {own}\n routes: [{}] }}\n",
                routes.join(", ")
            ));
        }
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(&path, conf).expect("write nats config");
        let mut server = NatsServer {
            name: name.to_string(),
            child: None,
            client: "127.0.0.1:0".parse().unwrap(),
            monitor: "127.0.0.1:0".parse().unwrap(),
            route: None,
            conf: path,
            log: Arc::default(),
        };
        server.route = cluster.map(|(own, _)| SocketAddr::from(([127, 0, 0, 1], own)));
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        self.log.lock().unwrap().clear();
        let mut child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = self.log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("FLOODWALL_TEST_LOG").is_some() {
                    eprintln!("nats: {line}");
                }
                log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        self.child = Some(child);
        // Startup of a fresh JetStream server takes well under a second;
        // 20 s covers a loaded CI machine.
        let ready = wait_until(Duration::from_secs(20), || {
            self.log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("Server is ready"))
        });
        assert!(
            ready,
            "nats-server {} not ready; log:\n{}",
            self.name,
            self.log_text()
        );
        self.client = self.addr_after("Listening for client connections on ");
        self.monitor = self.addr_after("Starting http monitor on ");
    }

    fn addr_after(&self, marker: &str) -> SocketAddr {
        let log = self.log.lock().unwrap();
        let line = log
            .iter()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("no {marker:?} in nats log"));
        let text = line.split(marker).nth(1).unwrap().trim();
        let text = text.trim_start_matches("http://");
        text.parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.client)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same server again (same config: its client port too,
    /// when it was fixed).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// GET `path` from the monitoring port, body as text.
    pub fn monitor_get(&self, path: &str) -> String {
        http_get(self.monitor, path)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET (the monitoring port closes after answering).
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect monitor");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// How long a new cluster may take to elect its meta leader with all
/// three peers, and how many times it is started afresh.
const FORM_WAIT: Duration = Duration::from_secs(20);
const FORM_ATTEMPTS: usize = 3;

/// A 3-node JetStream cluster on loopback.
pub struct Cluster {
    pub nodes: Vec<NatsServer>,
}

impl Cluster {
    /// A JetStream cluster needs its routes configured before it starts,
    /// so the route ports are picked first (bound to port 0 and
    /// released); client and monitoring ports are the servers' choice.
    /// A picked port can be taken before its node binds it (by another
    /// node's outgoing route, say): a cluster whose meta group has not
    /// seen all three peers within [`FORM_WAIT`] is started again on new
    /// ports and fresh stores.
    pub fn start(dir: &Path) -> Cluster {
        for attempt in 0..FORM_ATTEMPTS {
            let dir = dir.join(format!("cluster-{attempt}"));
            std::fs::create_dir_all(&dir).expect("cluster dir");
            let cluster = Cluster::start_once(&dir);
            if cluster.formed(FORM_WAIT) {
                return cluster;
            }
            eprintln!("nats cluster attempt {attempt} did not form; starting again");
        }
        panic!("a 3-node nats cluster did not form in {FORM_ATTEMPTS} attempts");
    }

    fn start_once(dir: &Path) -> Cluster {
        let ports: Vec<u16> = (0..3).map(|_| super::free_port().port()).collect();
        let routes: Vec<SocketAddr> = ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                NatsServer::start_with(dir, &format!("n{}", i + 1), None, Some((p, &routes)))
            })
            .collect();
        Cluster { nodes }
    }

    /// Every node's /jsz shows a meta leader and the two other peers.
    fn formed(&self, wait: Duration) -> bool {
        wait_until(wait, || {
            self.nodes.iter().all(|n| {
                serde_json::from_str::<serde_json::Value>(&n.monitor_get("/jsz")).is_ok_and(|v| {
                    let meta = &v["meta_cluster"];
                    meta["leader"].as_str().is_some_and(|l| !l.is_empty())
                        && meta["cluster_size"].as_u64() == Some(3)
                })
            })
        })
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(NatsServer::url)
            .collect()
    }

    /// The name of `stream`'s leader, from a live node's /jsz.
    pub fn stream_leader(&self, stream: &str) -> Option<String> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let body = node.monitor_get("/jsz?streams=true");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let accounts = v["account_details"].as_array().cloned().unwrap_or_default();
            for account in accounts {
                for s in account["stream_detail"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    if s["name"] == stream
                        && let Some(leader) = s["cluster"]["leader"].as_str()
                    {
                        return Some(leader.to_string());
                    }
                }
            }
        }
        None
    }
}

/// A runtime for the test's own nats client.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

async fn context(urls: &[String]) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .connect(urls.to_vec())
        .await
        .expect("test client connects to nats");
    jetstream::new(client)
}

/// Creates `stream` on `subject` with `replicas`, retrying while the
/// cluster elects its meta leader (a few seconds after start).
pub fn create_stream(urls: &[String], stream: &str, subject: &str, replicas: usize) {
    create_stream_with_window(urls, stream, subject, replicas, Duration::ZERO)
}

/// [`create_stream`] with a duplicate window (zero: the server's default,
/// 2 minutes).
pub fn create_stream_with_window(
    urls: &[String],
    stream: &str,
    subject: &str,
    replicas: usize,
    duplicate_window: Duration,
) {
    block_on(async {
        let js = context(urls).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let config = jetstream::stream::Config {
                name: stream.to_string(),
                subjects: vec![subject.to_string()],
                num_replicas: replicas,
                duplicate_window,
                ..Default::default()
            };
            match js.get_or_create_stream(config).await {
                Ok(_) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("create stream: {e}, retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("cannot create stream {stream}: {e}"),
            }
        }
    })
}

/// One message read back from a stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub payload: Vec<u8>,
    pub peer: Option<String>,
    pub id: Option<String>,
}

/// Messages in `stream` (as the stream state counts them).
pub fn stream_count(urls: &[String], stream: &str) -> u64 {
    block_on(async {
        let js = context(urls).await;
        let mut s = js.get_stream(stream).await.expect("get stream");
        s.info().await.expect("stream info").state.messages
    })
}

/// Reads every message of `stream` with an ordered consumer.
pub fn read_stream(urls: &[String], stream: &str) -> Vec<Stored> {
    block_on(async {
        let js = context(urls).await;
        let mut s = js.get_stream(stream).await.expect("get stream");
        let total = s.info().await.expect("stream info").state.messages as usize;
        // Right after a node was lost the cluster may time out creating a
        // consumer for a while; 60 s covers it on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        let consumer = loop {
            match s
                .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => eprintln!("ordered consumer: {e}, retrying"),
                Err(e) => panic!("ordered consumer: {e}"),
            }
        };
        let mut messages = consumer.messages().await.expect("consume");
        let mut out = Vec::with_capacity(total);
        // Reading 200k messages takes a few seconds; 120 s is for a
        // loaded machine.
        let deadline = Instant::now() + Duration::from_secs(120);
        while out.len() < total {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = tokio::time::timeout(left, messages.next()).await;
            let m = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => panic!("reading the stream: {e}"),
                Ok(None) | Err(_) => panic!("stream read stopped at {} of {total}", out.len()),
            };
            let header = |name: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_string())
            };
            out.push(Stored {
                payload: m.payload.to_vec(),
                peer: header("Floodwall-Peer"),
                id: header("Nats-Msg-Id"),
            });
        }
        out
    })
}
