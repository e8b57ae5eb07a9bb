//! Build script: records the git commit for `floodwall --version`.
//! FLOODWALL_COMMIT from the environment wins (a package built outside a
//! git checkout); else `git rev-parse --short HEAD`; else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=FLOODWALL_COMMIT");
    let commit = std::env::var("FLOODWALL_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuild when HEAD moves: HEAD itself (a branch switch), its reflog
    // and the branch's ref (a commit). Paths come from git, so worktrees
    // work too.
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]);
    // Only paths that exist: cargo reruns the script (and rebuilds the
    // crate) every time for a missing one, e.g. a branch whose ref is
    // packed.
    let mut watch: Vec<String> = ["HEAD", "logs/HEAD"]
        .into_iter()
        .chain(branch.as_deref())
        .filter_map(|file| git(&["rev-parse", "--git-path", file]))
        .collect();
    if let Some(dir) = git(&["rev-parse", "--git-common-dir"]) {
        watch.push(format!("{dir}/packed-refs"));
    }
    for path in watch {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=FLOODWALL_COMMIT={commit}");
}
