//! A directory only this user can write, opened once and used through its
//! descriptor.
//!
//! State directories live where other local users can create names too
//! (`/dev/shm`, `/tmp`). Checking a *path* and then using it lets another
//! user swap a symlink in between, or plant the directory before us: a
//! check that follows a symlink approves whatever it points to. So the
//! directory is opened once with `O_NOFOLLOW | O_DIRECTORY`, its owner and
//! mode are checked on that descriptor, and everything inside is reached
//! relative to it (`openat`, `mkdirat`, `unlinkat`) with `O_NOFOLLOW`, so
//! no name is resolved twice. A file inside is used only if this user owns
//! it and it has a single link: a pre-existing file someone else put there
//! (or a hard link to someone else's file) is refused, never adopted.
//!
//! Only the last component of the path is protected from symlinks: the
//! parents are what the user or the system chose (`/tmp` may itself be a
//! link), and a parent another user controls would let them plant the
//! directory, which the owner check then refuses.

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// An open directory that belongs to the effective user and grants nothing
/// to anyone else.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// How [`PrivateDir::open_file`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write, created (0600) if missing, not truncated.
    ReadWrite,
    /// Appending, created (0600) if missing.
    Append,
    /// Writing, created (0600) if missing, truncated.
    Truncate,
}

impl PrivateDir {
    /// Opens the directory at `path`, creating it with mode 0700 (and its
    /// missing parents) if needed. Refuses a symlink, a non-directory, and
    /// a directory owned by another user; a directory of this user that
    /// grants access to others is restricted to 0700 (its files are then
    /// still checked one by one when opened).
    pub fn open_or_create(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| context(e, "cannot create", parent))?;
        }
        match rustix::fs::mkdir(&path, Mode::RWXU) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(context(e.into(), "cannot create", &path)),
        }
        let fd = rustix::fs::open(&path, dir_flags(), Mode::empty())
            .map_err(|e| refused_open(e, &path))?;
        Self::checked(path, fd)
    }

    /// Opens the existing directory at `path` with the same checks as
    /// [`Self::open_or_create`], creating nothing. `NotFound` when absent.
    pub fn open_existing(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        let fd = rustix::fs::open(&path, dir_flags(), Mode::empty())
            .map_err(|e| refused_open(e, &path))?;
        Self::checked(path, fd)
    }

    /// The subdirectory `name`, created 0700 if missing, with the same
    /// checks.
    pub fn subdir(&self, name: impl AsRef<OsStr>) -> io::Result<PrivateDir> {
        let name = name.as_ref();
        let path = self.path.join(name);
        match rustix::fs::mkdirat(&self.fd, name, Mode::RWXU) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(context(e.into(), "cannot create", &path)),
        }
        let fd = rustix::fs::openat(&self.fd, name, dir_flags(), Mode::empty())
            .map_err(|e| refused_open(e, &path))?;
        Self::checked(path, fd)
    }

    fn checked(path: PathBuf, fd: OwnedFd) -> io::Result<Self> {
        let stat = rustix::fs::fstat(&fd)?;
        let me = rustix::process::geteuid().as_raw();
        if stat.st_uid != me {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} belongs to uid {}, not to this user (uid {me}); another user may have \
                     created it: remove it, or choose another state directory",
                    path.display(),
                    stat.st_uid
                ),
            ));
        }
        if stat.st_mode & 0o077 != 0 {
            // Ours, so ours to repair; on the descriptor, never by name.
            rustix::fs::fchmod(&fd, Mode::RWXU)
                .map_err(|e| context(e.into(), "cannot restrict to its owner", &path))?;
        }
        Ok(PrivateDir { path, fd })
    }

    /// The path the directory was opened at (for messages, and for what
    /// must be named by path, such as a socket to bind).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the file `name` inside, never following a symlink, and only if
    /// it is a regular file of this user with one link (a file created
    /// here is). Files are created with mode 0600.
    pub fn open_file(&self, name: impl AsRef<OsStr>, mode: FileMode) -> io::Result<File> {
        let name = name.as_ref();
        let access = match mode {
            FileMode::Read => OFlags::RDONLY,
            FileMode::ReadWrite => OFlags::RDWR | OFlags::CREATE,
            FileMode::Append => OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
            FileMode::Truncate => OFlags::WRONLY | OFlags::CREATE,
        };
        let path = self.path.join(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| refused_open(e, &path))?;
        check_own_file(&fd, &path)?;
        // Non-blocking only for the open (a FIFO planted there must not
        // hang it); a regular file never blocks anyway.
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags - OFlags::NONBLOCK)?;
        if mode == FileMode::Truncate {
            rustix::fs::ftruncate(&fd, 0)?;
        }
        Ok(File::from(fd))
    }

    /// Creates the file `name`, which must not exist yet (`O_EXCL`).
    pub fn create_new(&self, name: impl AsRef<OsStr>) -> io::Result<File> {
        let name = name.as_ref();
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| context(e.into(), "cannot create", &self.path.join(name)))?;
        Ok(File::from(fd))
    }

    /// Removes the file (or socket) `name`; a missing one is not an error.
    pub fn remove_file(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name.as_ref(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The device and inode of the entry `name`, without following a
    /// symlink; `None` when there is no such entry. Tells whether a file
    /// opened earlier is still the one under that name.
    pub fn identity(&self, name: impl AsRef<OsStr>) -> io::Result<Option<(u64, u64)>> {
        match rustix::fs::statat(&self.fd, name.as_ref(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some((stat.st_dev, stat.st_ino))),
            Err(rustix::io::Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `from` to `to`, both inside this directory.
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, from.as_ref(), &self.fd, to.as_ref())?;
        Ok(())
    }

    /// The names of the entries, `.` and `..` left out. Reads into a
    /// buffer on the stack: `fs::read_dir` allocates 32 KiB per listing,
    /// and some callers list at every daemon start.
    pub fn entries(&self) -> io::Result<Vec<std::ffi::OsString>> {
        use std::mem::MaybeUninit;
        // A descriptor of its own: a listing moves the file offset.
        let fd = rustix::fs::openat(&self.fd, ".", dir_flags(), Mode::empty())?;
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut entries = rustix::fs::RawDir::new(&fd, &mut buf);
        let mut names = Vec::new();
        while let Some(entry) = entries.next() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        Ok(names)
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Refuses an opened file that is not a regular file of this user with a
/// single link.
pub(crate) fn check_own_file(fd: impl AsFd, path: &Path) -> io::Result<()> {
    let stat = rustix::fs::fstat(fd)?;
    let me = rustix::process::geteuid().as_raw();
    let refuse = |what: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {what}; tend will not use it", path.display()),
        ))
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return refuse("not a regular file".into());
    }
    if stat.st_uid != me {
        return refuse(format!(
            "belongs to uid {}, not to this user (uid {me})",
            stat.st_uid
        ));
    }
    if stat.st_nlink > 1 {
        return refuse(format!("has {} hard links", stat.st_nlink));
    }
    Ok(())
}

fn context(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// The error for an open refused by `O_NOFOLLOW` or `O_DIRECTORY`, said
/// plainly.
fn refused_open(e: rustix::io::Errno, path: &Path) -> io::Error {
    // O_DIRECTORY | O_NOFOLLOW on a symlink says ENOTDIR; look (for the
    // message only) at what is there.
    let is_link = || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR if is_link() => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is a symbolic link; tend does not follow links for its own files \
                 (another user may have planted it): remove the link, or use another path",
                path.display()
            ),
        ),
        rustix::io::Errno::NOTDIR => io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", path.display()),
        ),
        e => context(e.into(), "cannot open", path),
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::unix::fs::PermissionsExt};

    use super::*;

    fn temp() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("pd")
            .tempdir_in("/tmp")
            .unwrap()
    }

    #[test]
    fn creates_0700_and_tightens_its_own_loose_directory() {
        let temp = temp();
        let dir = PrivateDir::open_or_create(temp.path().join("a/b")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path()), 0o700);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        PrivateDir::open_or_create(dir.path()).unwrap();
        assert_eq!(mode(dir.path()), 0o700);
    }

    #[test]
    fn refuses_a_symlink_in_place_of_the_directory() {
        let temp = temp();
        let target = temp.path().join("target");
        std::fs::create_dir(&target).unwrap();
        let link = temp.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = PrivateDir::open_or_create(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = PrivateDir::open_existing(&link).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn files_inside_never_follow_links_and_must_be_ours_alone() {
        let temp = temp();
        let dir = PrivateDir::open_or_create(temp.path().join("s")).unwrap();
        let precious = temp.path().join("precious");
        std::fs::write(&precious, "keep").unwrap();
        std::os::unix::fs::symlink(&precious, dir.path().join("log")).unwrap();
        for mode in [FileMode::Append, FileMode::Truncate, FileMode::ReadWrite] {
            assert!(dir.open_file("log", mode).is_err(), "{mode:?}");
        }
        std::fs::hard_link(&precious, dir.path().join("hard")).unwrap();
        let err = dir.open_file("hard", FileMode::Append).unwrap_err();
        assert!(err.to_string().contains("hard links"), "{err}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep");

        let mut file = dir.open_file("fresh", FileMode::Append).unwrap();
        file.write_all(b"x").unwrap();
        let mode = std::fs::metadata(dir.path().join("fresh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.create_new("fresh").is_err());
        let sub = dir.subdir("sub").unwrap();
        assert_eq!(sub.path(), dir.path().join("sub"));
        let mut names = dir.entries().unwrap();
        names.sort();
        assert_eq!(names, ["fresh", "hard", "log", "sub"]);
        dir.remove_file("fresh").unwrap();
        dir.remove_file("fresh").unwrap();
    }

    #[test]
    fn refuses_another_users_directory_and_files() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root to make files of another user");
            return;
        }
        let temp = temp();
        let planted = temp.path().join("planted");
        std::fs::create_dir(&planted).unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let err = PrivateDir::open_or_create(&planted).unwrap_err();
        assert!(err.to_string().contains("uid 65534"), "{err}");
        let mode = std::fs::metadata(&planted).unwrap().permissions().mode();
        assert_ne!(mode & 0o777, 0o700, "someone else's directory was chmod'ed");

        let dir = PrivateDir::open_or_create(temp.path().join("mine")).unwrap();
        std::fs::write(dir.path().join("journal"), "").unwrap();
        std::os::unix::fs::chown(dir.path().join("journal"), Some(65534), None).unwrap();
        let err = dir.open_file("journal", FileMode::Read).unwrap_err();
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }
}
