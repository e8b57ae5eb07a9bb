//! The floodwall binary: parse the command line, load the config, set up
//! logging and signals, run the daemon, map the outcome to an exit code
//! (SPEC.md): 0 drained, 1 messages lost at the deadline, 2 bad command
//! line or config, 3 cannot bind or open the sink.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{error, info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use floodwall::{Config, Shutdown, threads};

/// A TCP message-ingest daemon: bounded threads, bounded memory, every
/// undelivered message counted.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML config file (without it: built-in defaults).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the config, print the effective config and exit
    /// (0 valid, 2 invalid).
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("floodwall: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        // The TLS files are part of the configuration: load them too.
        if let Err(e) = floodwall::tls::check_files(&config) {
            eprintln!("floodwall: configuration error: {e}");
            return ExitCode::from(2);
        }
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&config.log.level);

    // Handlers first, so a signal during start-up is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("floodwall: cannot install signal handlers: {e}");
            return ExitCode::from(3);
        }
    };
    let shutdown = Shutdown::new();
    let daemon = match floodwall::start(config, shutdown.clone()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("floodwall: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let reopen = daemon.reopen_handle();
    let tls = daemon.tls_handle();
    let config_path = args.config.clone();
    // A panic here would leave SIGTERM ignored: threads::spawn makes it
    // start the shutdown instead (exit 1).
    let spawned = threads::spawn("fw-signal".to_string(), None, &daemon.panics(), move || {
        for signal in signals.forever() {
            match signal {
                SIGHUP => {
                    info!("SIGHUP: reopening the sink");
                    reopen.request();
                    if let (Some(tls), Some(path)) = (&tls, &config_path) {
                        reload_tls(tls, path);
                    }
                }
                _ if shutdown.trigger() => info!("signal {signal}: graceful shutdown"),
                _ => {
                    warn!("second signal {signal}: exiting now, queued messages are lost");
                    std::process::exit(1);
                }
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("floodwall: cannot start the signal thread: {e}");
        return ExitCode::from(3);
    }
    ExitCode::from(daemon.wait().exit_code())
}

/// SIGHUP with TLS on: re-reads the config file's `[server.tls]` and its
/// files for new connections. Anything that does not load leaves the old
/// ones in place, with one error line naming the key and the file.
fn reload_tls(tls: &floodwall::tls::ServerTls, path: &std::path::Path) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("SIGHUP: TLS not reloaded, keeping the old certificates: {e}");
            return;
        }
    };
    let Some(section) = &config.server.tls else {
        error!(
            "SIGHUP: TLS not reloaded, keeping the old certificates: server.tls: missing from {path:?} (TLS cannot be turned off without a restart)"
        );
        return;
    };
    if let Err(e) = tls.reload(section) {
        error!("SIGHUP: TLS not reloaded, keeping the old certificates: {e}");
    }
}

/// env_logger to stderr at the configured level; RUST_LOG overrides.
fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .init();
}
