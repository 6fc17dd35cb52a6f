//! The database's files as an operator handles them: their size on disk
//! (for `/metrics`), a consistent copy taken while `serve` runs (`herald
//! backup`, SQLite's online backup API), a full `VACUUM` (`herald
//! compact`), and whether another process has the file open. Each opens
//! its own connection on the path; none goes through `Store::open`, which
//! would create a missing database and migrate it.

use std::ffi::OsString;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::sqlite::BUSY_TIMEOUT;
use super::{Store, StoreError};
use crate::args;

/// Pages `backup` copies per step: 1 MiB of 4 KiB pages.
pub const BACKUP_PAGES_PER_STEP: i32 = 256;
/// The pause between two steps, leaving the disk and a core to `serve`.
pub const BACKUP_PAUSE: Duration = Duration::from_millis(2);
/// How long `compact` (and `migrate-to-postgres`) waits for the database
/// to be free before it reports that something still has it open.
const ALONE_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum FileError {
    /// There is no database at this path.
    Missing(PathBuf),
    /// The backup target exists and overwriting was not asked for.
    Exists(PathBuf),
    /// The operation would destroy data; the message says why.
    Refused(String),
    /// Another process (a running `serve`) has the database open.
    InUse(PathBuf),
    /// The caller stopped the backup; nothing was written.
    Interrupted,
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    Store(StoreError),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Missing(path) => write!(f, "{}: no database there", path.display()),
            FileError::Exists(path) => {
                write!(f, "{} exists; pass --force to replace it", path.display())
            }
            FileError::Refused(why) => write!(f, "{why}"),
            FileError::InUse(path) => write!(
                f,
                "{} is in use by another process (is `herald serve` running?); \
                 stop it and run this again",
                path.display()
            ),
            FileError::Interrupted => write!(f, "interrupted; nothing was written"),
            FileError::Io { path, cause } => write!(f, "{}: {cause}", path.display()),
            FileError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FileError {}

impl From<rusqlite::Error> for FileError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            // Not "busy", as StoreError would call it: waiting will not help.
            Some(ErrorCode::DiskFull) => FileError::Store(StoreError::Database(e.to_string())),
            _ => FileError::Store(e.into()),
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |cause| FileError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// `path` with `suffix` appended to its file name: SQLite's `-wal`, `-shm`
/// and `-journal` companions.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Bytes on disk of the database file and of its write-ahead log (0 when
/// there is none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub db: u64,
    pub wal: u64,
}

impl DiskUsage {
    pub fn of(db: &Path) -> DiskUsage {
        let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        DiskUsage {
            db: len(db),
            wal: len(&with_suffix(db, "-wal")),
        }
    }

    pub fn total(&self) -> u64 {
        self.db + self.wal
    }
}

impl Store {
    /// The database's size on disk now: the file's metadata on SQLite, the
    /// server's own figure for the database on PostgreSQL (0 if it cannot
    /// be read).
    pub fn disk_usage(&self) -> DiskUsage {
        if let Some(path) = self.path() {
            return DiskUsage::of(path);
        }
        let size = self.read(|c| {
            c.query_one(
                "SELECT pg_database_size(current_database())",
                args![],
                |r| r.get(0),
            )
        });
        DiskUsage {
            db: size.unwrap_or_else(|e| {
                log::warn!("cannot read the database's size: {e}");
                0
            }),
            wal: 0,
        }
    }
}

/// Opens an existing database, never creating one.
fn open_existing(db: &Path) -> Result<Connection, FileError> {
    if !db.is_file() {
        return Err(FileError::Missing(db.to_path_buf()));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Ok(Connection::open_with_flags(db, flags)?)
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Replace the target if it exists.
    pub overwrite: bool,
    pub pages_per_step: i32,
    pub pause: Duration,
}

impl Default for BackupOptions {
    fn default() -> BackupOptions {
        BackupOptions {
            overwrite: false,
            pages_per_step: BACKUP_PAGES_PER_STEP,
            pause: BACKUP_PAUSE,
        }
    }
}

/// What `backup` wrote.
#[derive(Debug, Clone, Copy)]
pub struct Copied {
    pub pages: u64,
    pub bytes: u64,
    pub steps: u64,
    /// Times SQLite started the copy over; 0 unless the snapshot moved.
    pub restarts: u64,
    pub took: Duration,
}

/// Copies the database at `db` to `to` while other processes keep writing
/// to it. After each step it calls `progress(copied, total)` (in pages),
/// which may stop the backup.
///
/// The copy is the database as of the moment the backup starts, WAL content
/// included: every transaction committed before then is in it, none after.
/// SQLite restarts a backup from page 1 whenever another connection writes
/// to the source between two steps, so under steady traffic a copy in
/// steps would never finish. Instead the source connection holds one read
/// transaction for the whole copy; the backup steps inside it and sees one
/// snapshot. In WAL mode a reader blocks no writer, so `serve` commits as
/// usual; its WAL cannot start over meanwhile and grows by what it writes
/// during the backup.
///
/// The pages go to a temporary file beside `to`, renamed over `to` only once
/// complete and synced: `to` is never half written, and a failed backup
/// leaves nothing behind.
pub fn backup(
    db: &Path,
    to: &Path,
    options: &BackupOptions,
    mut progress: impl FnMut(u64, u64) -> ControlFlow<()>,
) -> Result<Copied, FileError> {
    let started = Instant::now();
    let src = open_existing(db)?;
    check_target(db, to, options.overwrite)?;
    src.busy_timeout(BUSY_TIMEOUT)?;
    src.execute_batch("PRAGMA query_only = 1; BEGIN")?;
    // The first read starts the transaction: the snapshot is taken here.
    src.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(()))?;

    let partial = Partial::create(to)?;
    let mut dst = Connection::open_with_flags(
        &partial.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // A scratch file: it is synced once at the end and thrown away on any
    // failure, so it needs no journal and no syncs of its own.
    dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF")?;
    let (pages, steps, restarts) = copy_pages(&src, &mut dst, options, &mut progress)?;
    dst.close().map_err(|(_, e)| FileError::from(e))?;
    src.execute_batch("COMMIT")?;
    drop(src);

    let bytes = partial.finish(to)?;
    Ok(Copied {
        pages,
        bytes,
        steps,
        restarts,
        took: started.elapsed(),
    })
}

/// Refuses targets whose replacement would lose data: an existing file
/// without `overwrite`, the database itself, and a file with a WAL beside
/// it (a database in use, or left by a crash: its WAL would be applied to
/// the copy put in its place).
fn check_target(db: &Path, to: &Path, overwrite: bool) -> Result<(), FileError> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(db, to)
        || ["-wal", "-shm"]
            .iter()
            .any(|s| same(&with_suffix(db, s), to))
    {
        return Err(FileError::Refused(format!(
            "{} is the database being backed up; choose another file",
            to.display()
        )));
    }
    if to.exists() {
        if !overwrite {
            return Err(FileError::Exists(to.to_path_buf()));
        }
        let wal = with_suffix(to, "-wal");
        if wal.exists() {
            return Err(FileError::Refused(format!(
                "{} exists: {} is a database in use or one that was not closed cleanly; \
                 stop what uses it, or remove both",
                wal.display(),
                to.display()
            )));
        }
    }
    Ok(())
}

/// Steps through the backup; returns (pages, steps, restarts).
fn copy_pages(
    src: &Connection,
    dst: &mut Connection,
    options: &BackupOptions,
    progress: &mut impl FnMut(u64, u64) -> ControlFlow<()>,
) -> Result<(u64, u64, u64), FileError> {
    let backup = Backup::new(src, dst)?;
    let (mut steps, mut restarts, mut copied_before) = (0, 0, 0);
    let mut busy_since: Option<Instant> = None;
    loop {
        let result = backup.step(options.pages_per_step.max(1))?;
        steps += 1;
        let p = backup.progress();
        let (total, copied) = (p.pagecount as u64, (p.pagecount - p.remaining) as u64);
        if copied < copied_before {
            restarts += 1;
        }
        copied_before = copied;
        if progress(copied, total).is_break() {
            return Err(FileError::Interrupted);
        }
        match result {
            StepResult::Done => return Ok((total, steps, restarts)),
            StepResult::More => busy_since = None,
            // Only the temporary file can be locked, and nothing else
            // opens it; wait as long as a write would.
            _ => {
                let since = *busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() > BUSY_TIMEOUT {
                    return Err(StoreError::Busy("the backup stayed locked".into()).into());
                }
            }
        }
        std::thread::sleep(options.pause);
    }
}

impl From<StoreError> for FileError {
    fn from(e: StoreError) -> Self {
        FileError::Store(e)
    }
}

/// The temporary file a backup writes: removed on drop unless `finish`
/// renamed it into place.
struct Partial {
    path: PathBuf,
    done: bool,
}

impl Partial {
    fn create(to: &Path) -> Result<Partial, FileError> {
        let name = to
            .file_name()
            .ok_or_else(|| FileError::Refused(format!("{} names no file", to.display())))?;
        let mut partial = OsString::from(".");
        partial.push(name);
        partial.push(format!(".{}.partial", std::process::id()));
        let path = to.with_file_name(partial);
        // Left by an earlier backup of this process id that was killed.
        let _ = std::fs::remove_file(&path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error(to))?;
        Ok(Partial { path, done: false })
    }

    /// Syncs the file, renames it to `to` and syncs the directory; the
    /// copy's size.
    fn finish(mut self, to: &Path) -> Result<u64, FileError> {
        let file = std::fs::File::open(&self.path).map_err(io_error(&self.path))?;
        file.sync_all().map_err(io_error(&self.path))?;
        let bytes = file.metadata().map_err(io_error(&self.path))?.len();
        std::fs::rename(&self.path, to).map_err(io_error(to))?;
        self.done = true;
        if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Makes the rename durable; some filesystems cannot sync a
            // directory, and the copy is complete either way.
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(bytes)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let _ = std::fs::remove_file(with_suffix(&self.path, suffix));
            }
        }
    }
}

/// Opens the existing database at `db` for this connection alone, for as
/// long as it stays open: `InUse` while another process (a running
/// `serve`, Litestream) has it open, and then nothing was changed.
fn open_alone(db: &Path) -> Result<Connection, FileError> {
    let conn = open_existing(db)?;
    conn.busy_timeout(ALONE_WAIT)?;
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE")?;
    // In WAL mode every open connection keeps a shared lock on the file;
    // the first read in exclusive mode wants the exclusive lock.
    conn.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                FileError::InUse(db.to_path_buf())
            }
            _ => e.into(),
        })?;
    Ok(conn)
}

/// `Missing` when there is no database at `db`, `InUse` while another
/// process has it open. Changes no row (closing copies a WAL left by the
/// last `serve` back into the file, as any last connection does). What
/// opens the file after this check may still race a `serve` started in
/// between: it is the operator's mistake caught cheaply, not a lock.
pub(super) fn check_unused(db: &Path) -> Result<(), FileError> {
    open_alone(db).map(drop)
}

/// What `compact` did.
#[derive(Debug, Clone, Copy)]
pub struct Compacted {
    pub before: DiskUsage,
    pub after: DiskUsage,
    /// `PRAGMA auto_vacuum` before: 0 none, 1 full, 2 incremental.
    pub auto_vacuum_before: i64,
    pub took: Duration,
}

/// Rewrites the database at `db` with a full `VACUUM`, switching it to
/// incremental auto-vacuum on the way (the mode only changes on a
/// `VACUUM`), then copies the WAL back and truncates it.
///
/// A `VACUUM` holds the write lock from start to end; against a running
/// `serve` its writes would wait and then fail. So `compact` takes the
/// database for itself first (exclusive locking mode): while any other
/// process has it open, that fails and nothing is changed. Interrupted, the
/// database is as before: the `VACUUM` commits whole or not at all.
pub fn compact(db: &Path) -> Result<Compacted, FileError> {
    let started = Instant::now();
    let before = DiskUsage::of(db);
    let conn = open_alone(db)?;
    let auto_vacuum_before = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM")?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    conn.close().map_err(|(_, e)| FileError::from(e))?;
    Ok(Compacted {
        before,
        after: DiskUsage::of(db),
        auto_vacuum_before,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Synchronous;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn insert_users(store: &Store, range: std::ops::Range<usize>, name_len: usize) {
        store
            .write(|tx| {
                for i in range.clone() {
                    tx.execute(
                        "INSERT INTO users (id, email, name, created_at, updated_at)
                         VALUES (?1, 'a@b.c', ?2, 0, 0)",
                        crate::args![format!("u{i}"), "x".repeat(name_len)],
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    fn integrity(path: &Path) -> String {
        let conn = Connection::open(path).unwrap();
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    }

    /// Another connection commits between every two steps. Without the
    /// pinned snapshot each commit would send the copy back to page 1 and
    /// it would never end; with it, the copy takes the fewest steps and
    /// holds exactly what was committed before it began.
    #[test]
    fn a_backup_finishes_in_its_steps_while_another_connection_keeps_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        insert_users(&store, 0..2000, 1000);
        let committed = AtomicU64::new(2000);
        let stop = AtomicBool::new(false);
        let to = dir.path().join("copy.db");
        let options = BackupOptions {
            pages_per_step: 16,
            pause: Duration::from_millis(1),
            ..BackupOptions::default()
        };
        let (copied, first_step_at) = std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let i = committed.load(Ordering::SeqCst) as usize;
                    insert_users(&store, i..i + 1, 10);
                    committed.fetch_add(1, Ordering::SeqCst);
                }
            });
            let mut first_step_at = None;
            let copied = backup(&path, &to, &options, |_, _| {
                first_step_at.get_or_insert(committed.load(Ordering::SeqCst));
                ControlFlow::Continue(())
            });
            stop.store(true, Ordering::SeqCst);
            (copied.unwrap(), first_step_at.unwrap())
        });
        assert_eq!(copied.restarts, 0);
        assert_eq!(copied.steps, copied.pages.div_ceil(16));
        assert!(copied.steps > 10, "{copied:?}");
        assert!(committed.load(Ordering::SeqCst) > first_step_at + 10);
        assert_eq!(integrity(&to), "ok");
        let rows = count(
            &Connection::open(&to).unwrap(),
            "SELECT COUNT(*) FROM users",
        );
        // A commit may be counted only just after the snapshot was taken.
        assert!(rows >= 2000 && rows <= first_step_at as i64 + 1, "{rows}");
        assert_eq!(copied.bytes, std::fs::metadata(&to).unwrap().len());
    }

    #[test]
    fn a_backup_copies_what_is_still_in_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        // A reader pins the WAL so no checkpoint copies these rows back.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        count(&reader, "SELECT COUNT(*) FROM users");
        insert_users(&store, 0..50, 10);
        assert!(DiskUsage::of(&path).wal > 0);
        let to = dir.path().join("copy.db");
        backup(&path, &to, &BackupOptions::default(), |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let copy = Connection::open(&to).unwrap();
        assert_eq!(count(&copy, "SELECT COUNT(*) FROM users"), 50);
    }

    #[test]
    fn a_backup_replaces_only_what_it_may_and_leaves_nothing_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        insert_users(&store, 0..10, 10);
        let to = dir.path().join("copy.db");
        std::fs::write(&to, b"an older copy").unwrap();
        let plain = BackupOptions::default();
        let force = BackupOptions {
            overwrite: true,
            ..BackupOptions::default()
        };
        let err = backup(&path, &to, &plain, |_, _| ControlFlow::Continue(())).unwrap_err();
        assert!(matches!(err, FileError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(&to).unwrap(), b"an older copy");

        backup(&path, &to, &force, |_, _| ControlFlow::Continue(())).unwrap();
        assert_eq!(integrity(&to), "ok");

        for target in [path.clone(), with_suffix(&path, "-wal")] {
            let err = backup(&path, &target, &force, |_, _| ControlFlow::Continue(())).unwrap_err();
            assert!(matches!(err, FileError::Refused(_)), "{err}");
        }
        std::fs::write(with_suffix(&to, "-wal"), b"frames of another database").unwrap();
        let err = backup(&path, &to, &force, |_, _| ControlFlow::Continue(())).unwrap_err();
        assert!(matches!(err, FileError::Refused(_)), "{err}");

        let other = dir.path().join("other.db");
        let mut steps = 0;
        let options = BackupOptions {
            pages_per_step: 1,
            ..plain.clone()
        };
        let err = backup(&path, &other, &options, |_, _| {
            steps += 1;
            match steps {
                3 => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        })
        .unwrap_err();
        assert!(matches!(err, FileError::Interrupted), "{err}");
        assert!(!other.exists());

        let nowhere = dir.path().join("missing").join("copy.db");
        let err = backup(&path, &nowhere, &plain, |_, _| ControlFlow::Continue(())).unwrap_err();
        assert!(matches!(err, FileError::Io { .. }), "{err}");
        let err = backup(&dir.path().join("none.db"), &to, &force, |_, _| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert!(matches!(err, FileError::Missing(_)), "{err}");
        assert!(!dir.path().join("none.db").exists());

        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("partial"))
            .collect();
        left.sort();
        assert_eq!(left, Vec::<String>::new());
    }

    #[test]
    fn compact_gives_deleted_pages_back_and_converts_to_incremental_auto_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            // A database made before herald turned on auto_vacuum.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA auto_vacuum = NONE; CREATE TABLE legacy (x)")
                .unwrap();
        }
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        insert_users(&store, 0..2000, 2000);
        store
            .write(|tx| {
                tx.execute("DELETE FROM users WHERE id != 'u7'", crate::args![])?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        drop(store);

        let done = compact(&path).unwrap();
        assert_eq!(done.auto_vacuum_before, 0);
        assert!(
            done.after.total() * 10 < done.before.total(),
            "{done:?} did not shrink"
        );
        assert_eq!(done.after.db, std::fs::metadata(&path).unwrap().len());
        assert_eq!(integrity(&path), "ok");
        let conn = Connection::open(&path).unwrap();
        assert_eq!(count(&conn, "PRAGMA auto_vacuum"), 2);
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM users"), 1);
    }

    #[test]
    fn compact_refuses_a_database_another_process_has_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        insert_users(&store, 0..10, 10);
        let err = compact(&path).unwrap_err();
        assert!(matches!(err, FileError::InUse(_)), "{err}");
        // The store goes on writing afterwards.
        insert_users(&store, 10..20, 10);
        let err = compact(&dir.path().join("none.db")).unwrap_err();
        assert!(matches!(err, FileError::Missing(_)), "{err}");
    }
}
