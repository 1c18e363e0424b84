//! Starting over as a new member: a node that left its cluster without a drain of its own
//! (declared dead while it was away) can never rejoin on its data dir, so the binary starts
//! over on an empty one, under the same id, joining through a member it knew.
//!
//! A node that drains by its own `leave` is not declared dead: `LEAVING`, written when it
//! is asked to leave (or seen leaving), keeps it from ever starting over.
//!
//! The marker file `REJOIN` holds the step and the member's peer address. `pending ADDR`
//! is written, synced, before the old process replaces itself (exec); the new process wipes
//! the data dir (all but `LOCK` and the marker) and only then writes `joined ADDR`, so a
//! crash at any point leaves either the wipe to do again or a clean data dir. The marker
//! stays: on every later start, it is where the node joins through when `--join` is not
//! given (an empty data dir without a join would found a cluster of its own).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

const MARKER: &str = "REJOIN";
const LOCK: &str = "LOCK";
/// Written (synced) once the node is asked to leave, or seen leaving: a node that left by
/// its own drain never starts over, restarted or not; the directory only says "left".
const LEAVING: &str = "LEAVING";

/// Records, durably, that this data dir's node is draining out of its cluster.
pub fn mark_leaving(data_dir: &Path) -> Result<(), String> {
    let path = data_dir.join(LEAVING);
    if path.exists() {
        return Ok(());
    }
    let write = || -> std::io::Result<()> {
        std::fs::File::create(&path)?.sync_all()?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// Whether this data dir's node was draining (then it stops when it left, never starts over).
pub fn is_leaving(data_dir: &Path) -> bool {
    data_dir.join(LEAVING).exists()
}

/// What the marker says to do at startup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejoin {
    /// No marker: an ordinary start.
    None,
    /// The data dir is to be wiped, then the node joins through this member.
    Pending(SocketAddr),
    /// The data dir was wiped on an earlier start: join through this member.
    Joined(SocketAddr),
}

pub fn read(data_dir: &Path) -> Result<Rejoin, String> {
    let path = data_dir.join(MARKER);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Rejoin::None),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    let damaged = || {
        format!(
            "{} is damaged ({text:?}); it says where this node rejoins its cluster",
            path.display()
        )
    };
    let (step, address) = text.trim().split_once(' ').ok_or_else(damaged)?;
    let address: SocketAddr = address.parse().map_err(|_| damaged())?;
    match step {
        "pending" => Ok(Rejoin::Pending(address)),
        "joined" => Ok(Rejoin::Joined(address)),
        _ => Err(damaged()),
    }
}

/// Writes the marker durably: to a temporary file, synced, renamed over, directory synced.
pub fn write(data_dir: &Path, rejoin: Rejoin) -> Result<(), String> {
    let text = match rejoin {
        Rejoin::None => return Ok(()),
        Rejoin::Pending(address) => format!("pending {address}\n"),
        Rejoin::Joined(address) => format!("joined {address}\n"),
    };
    let temporary = data_dir.join(format!("{MARKER}.new"));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, data_dir.join(MARKER))?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|error| format!("cannot write {}: {error}", data_dir.join(MARKER).display()))
}

/// Deletes everything in the data dir but the lock and the marker.
pub fn wipe(data_dir: &Path) -> Result<(), String> {
    let failed = |error: std::io::Error| format!("cannot empty {}: {error}", data_dir.display());
    for entry in std::fs::read_dir(data_dir).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        let name = entry.file_name();
        if name == MARKER || name == LOCK {
            continue;
        }
        let path = entry.path();
        if entry.file_type().map_err(failed)?.is_dir() {
            std::fs::remove_dir_all(&path).map_err(failed)?;
        } else {
            std::fs::remove_file(&path).map_err(failed)?;
        }
    }
    std::fs::File::open(data_dir)
        .and_then(|directory| directory.sync_all())
        .map_err(failed)
}

/// Carries out the marker at startup: wipes a pending data dir. Returns the member to join
/// through, if the marker names one.
pub fn prepare(data_dir: &Path) -> Result<Option<SocketAddr>, String> {
    match read(data_dir)? {
        Rejoin::None => Ok(None),
        Rejoin::Pending(address) => {
            tracing::warn!(
                data_dir = %data_dir.display(),
                through = %address,
                "this node left its cluster without a drain: its data dir is emptied and it joins again as a new member"
            );
            wipe(data_dir)?;
            write(data_dir, Rejoin::Joined(address))?;
            Ok(Some(address))
        }
        Rejoin::Joined(address) => Ok(Some(address)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_rejoin_empties_the_data_dir_once_and_keeps_where_to_join() {
        let directory = tempfile::tempdir().unwrap();
        let data_dir = directory.path();
        assert_eq!(prepare(data_dir).unwrap(), None);
        std::fs::write(data_dir.join("instance"), "7").unwrap();
        std::fs::write(data_dir.join(LOCK), "").unwrap();
        std::fs::create_dir(data_dir.join("raft-log")).unwrap();
        std::fs::write(data_dir.join("raft-log").join("segment"), "entries").unwrap();
        let address: SocketAddr = "127.0.0.1:7481".parse().unwrap();
        write(data_dir, Rejoin::Pending(address)).unwrap();
        assert_eq!(prepare(data_dir).unwrap(), Some(address));
        let mut left: Vec<String> = std::fs::read_dir(data_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![LOCK.to_string(), MARKER.to_string()]);
        assert_eq!(read(data_dir).unwrap(), Rejoin::Joined(address));
        // A later start keeps what it has since.
        std::fs::write(data_dir.join("instance"), "8").unwrap();
        assert_eq!(prepare(data_dir).unwrap(), Some(address));
        assert!(data_dir.join("instance").exists());
    }

    #[test]
    fn a_damaged_marker_is_refused_with_its_path() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join(MARKER), "pending nowhere").unwrap();
        let refusal = prepare(directory.path()).unwrap_err();
        assert!(refusal.contains("REJOIN is damaged"), "{refusal}");
    }
}
