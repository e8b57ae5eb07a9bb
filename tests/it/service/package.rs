//! The Debian package as an operator gets it: scripts/package.sh builds
//! the .deb from the release binary this test run already built
//! (`--no-build`), `dpkg-deb -x` unpacks it into a temporary root, the
//! shipped config passes `--check-config`, the units pass
//! `systemd-analyze verify` and score "OK" (at most 2.0) in
//! `systemd-analyze security --offline=true`, and lintian finds no error.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run scripts/install-peers.sh)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the .deb (once per test binary) and returns its path.
fn deb() -> PathBuf {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(|| {
        // The binary cargo built for this test run is the release one.
        assert!(
            support::bin().contains("/release/"),
            "run with --release: the package takes target/release/floodwall"
        );
        let (ok, out, err) = run(Command::new("bash")
            .arg(root().join("scripts/package.sh"))
            .arg("--no-build")
            .current_dir(root()));
        assert!(ok, "scripts/package.sh failed:\n{err}");
        let path = PathBuf::from(out.lines().last().expect("package path").trim());
        root().join(path)
    })
    .clone()
}

fn unpack(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
    assert!(ok, "dpkg-deb -x failed: {err}");
    dir
}

#[test]
fn the_package_unpacks_runs_and_checks_its_shipped_config() {
    let deb = deb();
    let tree = unpack(&deb);
    let at = |p: &str| tree.path().join(p);
    for file in [
        "usr/bin/floodwall",
        "etc/floodwall/floodwall.toml",
        "usr/lib/systemd/system/floodwall.service",
        "usr/lib/systemd/system/floodwall.socket",
        "usr/share/man/man1/floodwall.1.gz",
        "usr/share/bash-completion/completions/floodwall",
        "usr/share/zsh/vendor-completions/_floodwall",
        "usr/share/fish/vendor_completions.d/floodwall.fish",
        "usr/share/doc/floodwall/README.md",
        "usr/share/doc/floodwall/copyright",
    ] {
        assert!(at(file).is_file(), "{file} missing from the package");
    }
    // The control part: a conffile, and the user made in postinst.
    let control = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(control.path()));
    assert!(ok, "dpkg-deb -e: {err}");
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert!(conffiles.contains("/etc/floodwall/floodwall.toml"));
    let postinst = std::fs::read_to_string(control.path().join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");

    let bin = at("usr/bin/floodwall");
    let (ok, out, _) = run(Command::new(&bin).arg("--version"));
    assert!(ok && out.contains("(commit "), "--version: {out}");

    // The shipped config, exactly: valid as it is.
    let shipped = at("etc/floodwall/floodwall.toml");
    floodwall::Config::load(&shipped).expect("the shipped config is valid");
    // --check-config probes its ports and paths too: /var/log/floodwall
    // and /var/lib/floodwall are systemd's to create (LogsDirectory=,
    // StateDirectory=) and port 514 is the socket's, so the same file is
    // checked with those moved into a temp dir.
    let work = tempfile::tempdir().unwrap();
    let moved = std::fs::read_to_string(&shipped)
        .unwrap()
        .replace("/var/log/floodwall", &work.path().display().to_string())
        .replace("/var/lib/floodwall", &work.path().display().to_string())
        .replace("[::]:514", "127.0.0.1:0")
        .replace("127.0.0.1:9140", "127.0.0.1:0");
    let config = work.path().join("floodwall.toml");
    std::fs::write(&config, moved).unwrap();
    let (ok, out, err) = run(Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .arg("--print"));
    assert!(ok, "--check-config on the shipped config failed: {err}");
    for line in [
        "type = \"file\"",
        "[spool]",
        "max_connections = 1024",
        "workers = 1",
    ] {
        assert!(
            out.contains(line),
            "effective config lacks {line:?}:\n{out}"
        );
    }

    // lintian: warnings are listed in docs/systemd.md; errors fail.
    let (_, out, err) = run(Command::new("lintian").arg(&deb));
    let errors: Vec<&str> = out
        .lines()
        .chain(err.lines())
        .filter(|l| l.starts_with("E: "))
        .collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
}

#[test]
fn the_units_verify_and_score_ok_in_systemd_analyze_security() {
    let deb = deb();
    let tree = unpack(&deb);
    let units = tempfile::tempdir().unwrap();
    // verify checks that ExecStart= exists: point it at the unpacked binary.
    let bin = tree.path().join("usr/bin/floodwall");
    let service =
        std::fs::read_to_string(tree.path().join("usr/lib/systemd/system/floodwall.service"))
            .unwrap()
            .replace("/usr/bin/floodwall", &bin.display().to_string());
    std::fs::write(units.path().join("floodwall.service"), service).unwrap();
    std::fs::copy(
        tree.path().join("usr/lib/systemd/system/floodwall.socket"),
        units.path().join("floodwall.socket"),
    )
    .unwrap();
    // Documentation=man:floodwall(1) is checked too: the unpacked page.
    let (ok, out, err) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.path().join("floodwall.service"))
        .arg(units.path().join("floodwall.socket"))
        .env("MANPATH", tree.path().join("usr/share/man")));
    assert!(
        ok && err.trim().is_empty(),
        "systemd-analyze verify:\n{out}{err}"
    );

    let (ok, out, err) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(units.path().join("floodwall.service")));
    assert!(ok, "systemd-analyze security: {err}");
    let level = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for floodwall.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{out}");
}
