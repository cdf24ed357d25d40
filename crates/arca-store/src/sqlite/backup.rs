//! Online backups of the embedded engine: a consistent, compacted copy of
//! the database taken while the server keeps serving, with SQLite's
//! `VACUUM INTO` (one read transaction, so the copy is one point in time and
//! writers are never blocked in WAL mode).
//!
//! The copy is written beside its destination as `<dest>.partial`, checked
//! with `PRAGMA quick_check`, flushed to disk, and only then renamed to
//! `<dest>`: an interrupted backup never leaves a file under the name a
//! restore would look for.
//!
//! `archive` makes the backup `arca backup` writes: a tar archive of the
//! data directory as a restore needs it, `arca.db` (the copy above) and
//! `files/...` (the bytes of every file the copy knows). Stored files never
//! change once written, so the copy's list of files is the point in time:
//! each is added as it is now; one deleted since the copy was taken is left
//! out, and its row dropped from the copy, so the archive never names bytes
//! it does not hold. Files uploaded after the copy was taken are not in it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// Writes a consistent copy of the database at `src` to `dest`, which must
/// not exist yet; returns the copy's size in bytes. Blocking.
pub fn backup(src: &Path, dest: &Path) -> Result<u64, String> {
    if !src.is_file() {
        return Err(format!("{}: no database there", src.display()));
    }
    if dest.exists() {
        return Err(format!(
            "{} already exists; choose a new name",
            dest.display()
        ));
    }
    let partial = partial_path(dest);
    if partial.exists() {
        return Err(format!(
            "{} is left from an interrupted backup; remove it first",
            partial.display()
        ));
    }
    let partial_str = partial
        .to_str()
        .ok_or_else(|| format!("{}: the path is not UTF-8", partial.display()))?;
    // Read-write without CREATE: a WAL database's reader may need to create
    // its `-shm` file, and a missing database must not be made empty.
    let conn = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {e}", src.display()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let copied = conn
        .execute("VACUUM INTO ?1", [partial_str])
        .map(|_| ())
        .map_err(|e| format!("backup of {} failed: {e}", src.display()));
    drop(conn);
    let checked = copied.and_then(|()| check_and_flush(&partial));
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, dest).map_err(|e| {
        format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            dest.display()
        )
    })?;
    // The rename itself survives power loss once the folder is flushed.
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("cannot flush {}: {e}", dir.display()))?;
    }
    std::fs::metadata(dest)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", dest.display()))
}

/// Writes the backup archive of the database `src` (and its `files`
/// folder) to `out`, using `scratch` (which must not exist) for the
/// database copy; returns the archive's size in bytes and the number of
/// files in it. Blocking.
pub fn archive(
    src: &Path,
    scratch: &Path,
    out: impl std::io::Write,
) -> Result<(u64, usize), String> {
    struct Removed<'a>(&'a Path);
    impl Drop for Removed<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    backup(src, scratch)?;
    let _scratch = Removed(scratch);
    let copy = Connection::open(scratch).map_err(|e| format!("cannot open the copy: {e}"))?;
    let listed: Vec<(String, String)> = copy
        .prepare("SELECT tenant, id FROM _arca_files ORDER BY tenant, id")
        .and_then(|mut st| st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(|e| format!("cannot list the stored files: {e}"))?;
    let root = super::files::files_dir(src);
    let mut tar = tar::Builder::new(CountingWriter {
        inner: out,
        bytes: 0,
    });
    tar.mode(tar::HeaderMode::Deterministic);
    let mut gone = Vec::new();
    let mut kept = 0;
    for (tenant, id) in listed {
        let rel = super::files::relative_path(&tenant, &id);
        let mut file = match std::fs::File::open(root.join(&rel)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                gone.push((tenant, id));
                continue;
            }
            Err(e) => return Err(format!("cannot read {}: {e}", rel.display())),
        };
        let size = file
            .metadata()
            .map_err(|e| format!("{}: {e}", rel.display()))?
            .len();
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o600);
        tar.append_data(&mut header, PathBuf::from("files").join(&rel), &mut file)
            .map_err(|e| format!("writing the archive: {e}"))?;
        kept += 1;
    }
    for (tenant, id) in &gone {
        copy.execute(
            "DELETE FROM _arca_files WHERE tenant = ?1 AND id = ?2",
            [tenant, id],
        )
        .and_then(|_| {
            copy.execute(
                "DELETE FROM _arca_thumbnails WHERE tenant = ?1 AND file_id = ?2",
                [tenant, id],
            )
        })
        .map_err(|e| format!("updating the copy: {e}"))?;
    }
    drop(copy);
    let mut db = std::fs::File::open(scratch).map_err(|e| format!("reading the copy: {e}"))?;
    let size = db.metadata().map_err(|e| e.to_string())?.len();
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    tar.append_data(&mut header, "arca.db", &mut db)
        .map_err(|e| format!("writing the archive: {e}"))?;
    let mut counted = tar
        .into_inner()
        .map_err(|e| format!("writing the archive: {e}"))?;
    std::io::Write::flush(&mut counted).map_err(|e| format!("writing the archive: {e}"))?;
    Ok((counted.bytes, kept))
}

/// A writer that counts what passes through it.
struct CountingWriter<W> {
    inner: W,
    bytes: u64,
}

impl<W: std::io::Write> std::io::Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `<dest>.partial`, where the copy is written before it is checked.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// SQLite's structural check of the copy, then its bytes to disk.
fn check_and_flush(path: &Path) -> Result<(), String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open the copy {}: {e}", path.display()))?;
    let verdict: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| format!("cannot check the copy: {e}"))?;
    if verdict != "ok" {
        return Err(format!("the copy failed SQLite's quick_check: {verdict}"));
    }
    drop(conn);
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot flush {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "arca-backup-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn copies_every_row_and_refuses_to_overwrite() {
        let dir = temp("copy");
        let src = dir.join("src.db");
        let conn = Connection::open(&src).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t (x INTEGER);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
             INSERT INTO t SELECT i FROM n;",
        )
        .expect("fill");
        // The writer stays open: the rows may still be in the WAL only.
        let dest = dir.join("copy.db");
        let bytes = backup(&src, &dest).expect("backup");
        assert_eq!(bytes, std::fs::metadata(&dest).expect("meta").len());
        assert!(!partial_path(&dest).exists());
        let copy = Connection::open(&dest).expect("open copy");
        let (n, sum): (i64, i64) = copy
            .query_row("SELECT count(*), sum(x) FROM t", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("count");
        assert_eq!((n, sum), (1000, 500_500));

        let again = backup(&src, &dest).expect_err("dest exists");
        assert!(again.contains("already exists"), "{again}");
        let missing = backup(&dir.join("nothing.db"), &dir.join("x.db")).expect_err("no source");
        assert!(missing.contains("no database"), "{missing}");
        assert!(
            !dir.join("nothing.db").exists(),
            "a missing source was created"
        );
        drop(conn);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_left_partial_file_is_reported_not_overwritten() {
        let dir = temp("partial");
        let src = dir.join("src.db");
        Connection::open(&src)
            .and_then(|c| c.execute_batch("CREATE TABLE t (x)"))
            .expect("src");
        let dest = dir.join("copy.db");
        std::fs::write(partial_path(&dest), b"not ours to delete").expect("partial");
        let e = backup(&src, &dest).expect_err("partial exists");
        assert!(e.contains("interrupted backup"), "{e}");
        assert_eq!(
            std::fs::read(partial_path(&dest)).expect("read"),
            b"not ours to delete"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
