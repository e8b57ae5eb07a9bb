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
    // Rebuild when HEAD moves: HEAD itself (a branch switch) and the
    // branch's ref (a commit). Paths come from git, so worktrees work too.
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]);
    for file in ["HEAD"].into_iter().chain(branch.as_deref()) {
        if let Some(p) = git(&["rev-parse", "--git-path", file]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(p) = git(&["rev-parse", "--git-common-dir"]) {
        println!("cargo:rerun-if-changed={p}/packed-refs");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=FLOODWALL_COMMIT={commit}");
}
