//! The spool's identity: a random name made once per spool directory and
//! kept in `dir/id`. A record's place `(segment, offset)` is unique only
//! within one spool; names built from it (nats: `Nats-Msg-Id`) carry the
//! spool's identity too, so that two daemons of a fleet publishing into
//! one stream, or a spool wiped and begun afresh (its segment numbers
//! start at 1 again), never produce each other's names.
//!
//! The file is written once (temporary file, fsync, rename, directory
//! fsync) before the first segment of a new spool exists, so no record
//! is ever named under an identity that a crash could take back. A
//! missing or unreadable file gets a new identity: never a refusal to
//! start (a replay then gets new names: duplicates, never a gap).
//!
//! Not here: what the names are used for (the sinks).

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use log::warn;

const FILE: &str = "id";
/// 64 random bits as hex.
const LEN: usize = 16;

/// The identity in `dir/id`, made (durably) if missing or unreadable.
pub fn load_or_create(dir: &Path) -> io::Result<String> {
    let path = dir.join(FILE);
    match fs::read_to_string(&path) {
        Ok(text) if valid(text.trim_end()) => return Ok(text.trim_end().to_string()),
        Ok(_) => warn!(
            "spool: {} is unreadable, the spool gets a new identity (replayed nats messages get new ids)",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let id = fresh();
    let tmp = dir.join(format!("{FILE}.tmp"));
    fs::write(&tmp, format!("{id}\n"))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, &path)?;
    super::segment::sync_dir(dir)?;
    Ok(id)
}

fn valid(id: &str) -> bool {
    id.len() == LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// 64 bits from the kernel's generator (ring's, which the TLS code uses
/// too); if that fails, the clock and the process id (unique enough: this
/// runs once per spool).
fn fresh() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    let bits = match SystemRandom::new().fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ u64::from(std::process::id()).rotate_left(40)
        }
    };
    format!("{bits:0LEN$x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path()).unwrap();
        assert!(valid(&id), "{id}");
        assert_eq!(load_or_create(dir.path()).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), id);
    }

    #[test]
    fn a_damaged_identity_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), b"\0\0garbage").unwrap();
        let id = load_or_create(dir.path()).unwrap();
        assert!(valid(&id), "{id}");
        assert_eq!(load_or_create(dir.path()).unwrap(), id);
    }
}
