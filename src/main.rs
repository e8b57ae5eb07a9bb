//! The floodwall binary: parse the command line, load the config, set up
//! logging and signals, run the daemon, map the outcome to an exit code:
//! 0 drained, 1 messages lost at the deadline, 2 bad command line or
//! config, 3 cannot bind or open the sink or the spool (docs/configuration.md).
//!
//! Under systemd (`Type=notify`) it also tells the manager when it is
//! ready and when a SIGHUP reload runs (src/systemd.rs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use log::{error, info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use floodwall::{Config, Settings, Shutdown, systemd, threads};

/// `--version`: the crate version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLOODWALL_COMMIT"),
    ")"
);

const EXAMPLES: &str = "\
Examples:
  floodwall --config /etc/floodwall/floodwall.toml
      run the daemon (Ctrl-C or SIGTERM drains and stops it)
  floodwall --config /etc/floodwall/floodwall.toml --check-config --print
      validate the file, print the effective config (and warn about a busy
      port or an unusable sink path or spool directory)
  floodwall --config floodwall.toml --pid-file /run/floodwall.pid
      run, writing the pid for `kill -HUP $(cat /run/floodwall.pid)`
  floodwall --version

Signals: SIGTERM/SIGINT drain and stop; SIGHUP reopens the file sink and
re-reads [server.tls]. Exit codes: 0 drained, 1 messages lost, 2 bad
configuration, 3 cannot bind or open the sink or the spool.
Manual: man floodwall; docs: /usr/share/doc/floodwall/";

/// A TCP message-ingest daemon: bounded threads, bounded memory, every
/// undelivered message counted.
#[derive(Debug, Parser)]
#[command(name = "floodwall", version = VERSION, about, after_help = EXAMPLES)]
struct Args {
    /// TOML config file; without it, built-in defaults.
    /// Example: --config /etc/floodwall/floodwall.toml
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the config (TLS files loaded), print the effective config
    /// with every default filled in and exit: 0 valid, 2 invalid. A port,
    /// file or directory start-up could not use (exit 3 then) is warned
    /// about on stderr.
    /// Example: --config floodwall.toml --check-config
    #[arg(long)]
    check_config: bool,
    /// With --check-config: print the effective config (the default; the
    /// flag says so explicitly). Example: --check-config --print
    #[arg(long, requires = "check_config")]
    print: bool,
    /// Write the daemon's pid to PATH once it is listening; removed at
    /// exit. Example: --pid-file /run/floodwall/floodwall.pid
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Write the man page (floodwall.1) and shell completions (bash, zsh,
    /// fish) into DIR and exit: used by scripts/package.sh.
    #[arg(long, value_name = "DIR", hide = true)]
    generate: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.generate {
        return match generate(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floodwall: --generate {}: {e}", dir.display());
                ExitCode::from(3)
            }
        };
    }
    let settings = match &args.config {
        Some(path) => Settings::load(path),
        None => Config::default().validate(),
    };
    let settings = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("floodwall: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        // The TLS files are part of the configuration: load them too.
        if let Err(e) = floodwall::tls::check_files(&settings.config) {
            eprintln!("floodwall: configuration error: {e}");
            return ExitCode::from(2);
        }
        // What start-up would fail on with exit 3 (the ports, the file
        // sink's path, the spool directory) is warned about, not an
        // error: SPEC.md gives --check-config exit 0 or 2 only, and the
        // check is run beside the live daemon, whose ports are taken.
        if let Err(e) = floodwall::probe(&settings) {
            eprintln!(
                "floodwall: warning: starting now would fail (exit {}): {e}",
                e.exit_code()
            );
        }
        print!("{}", settings.config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&settings.config.log.level);

    // Handlers first, so a signal during start-up is not lost.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("floodwall: cannot install signal handlers: {e}");
            return ExitCode::from(3);
        }
    };
    let shutdown = Shutdown::new();
    let daemon = match floodwall::start_settings(settings, shutdown.clone()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("floodwall: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let pid_file = match &args.pid_file {
        Some(path) => match write_pid(path) {
            Ok(()) => Some(path.clone()),
            Err(e) => {
                eprintln!("floodwall: --pid-file {}: {e}", path.display());
                daemon.shutdown_handle().trigger();
                daemon.wait();
                return ExitCode::from(3);
            }
        },
        None => None,
    };
    // Every listener is bound and every sink thread runs.
    systemd::ready(&format!("listening on {}", daemon.local_addr()));
    let reopen = daemon.reopen_handle();
    let tls = daemon.tls_handle();
    let config_path = args.config.clone();
    // A panic here would leave SIGTERM ignored: threads::spawn makes it
    // start the shutdown instead (exit 1).
    let spawned = threads::spawn("fw-signal".to_string(), None, &daemon.panics(), move || {
        for signal in signals.forever() {
            match signal {
                SIGHUP => {
                    systemd::reloading();
                    info!("SIGHUP: reopening the sink");
                    reopen.request();
                    if let (Some(tls), Some(path)) = (&tls, &config_path) {
                        reload_tls(tls, path);
                    }
                    systemd::ready("running (reloaded)");
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
    let code = daemon.wait().exit_code();
    if let Some(path) = pid_file {
        let _ = std::fs::remove_file(path);
    }
    ExitCode::from(code)
}

/// `--pid-file`: the pid and a newline, written whole (temp file, rename).
fn write_pid(path: &Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

/// `--generate DIR`: the man page from the clap definition (clap_mangen)
/// and completions (clap_complete), so that they never drift from it.
fn generate(dir: &Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let cmd = Args::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::File::create(dir.join("floodwall.1"))?.write_all(&page)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "floodwall", dir)?;
    }
    Ok(())
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
