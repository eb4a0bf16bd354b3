//! File-creation events for readiness, from one shared inotify instance.
//!
//! A daemon is ready once its socket accepts, and the socket file appears
//! when the daemon calls `bind`. Instead of polling `connect` on a timer,
//! tend watches the socket's directory and tries to connect when a file of
//! that name appears. Written here rather than with the `inotify` crate
//! because that crate hands out one stream per inotify instance, and Linux
//! allows only 128 instances per user by default: a manager of 1,000
//! daemons needs one instance shared by all waiters, dispatched by name.

use std::{
    collections::HashMap,
    ffi::{CStr, OsStr, OsString},
    io,
    mem::MaybeUninit,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::Path,
    sync::{Arc, Mutex},
};

use rustix::fs::inotify;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::Notify,
    task::JoinHandle,
};

type Key = (i32, OsString);

struct Shared {
    fd: AsyncFd<OwnedFd>,
    watches: Mutex<Watches>,
}

#[derive(Default)]
struct Watches {
    /// Who waits for which name in which watched directory.
    waiters: HashMap<Key, Arc<Notify>>,
    /// Per watch descriptor: a generation and how many waiters use it. The
    /// kernel reuses descriptor numbers after a directory is deleted, so a
    /// waiter only releases the generation it registered with.
    directories: HashMap<i32, (u64, usize)>,
    next_generation: u64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watches> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shared watcher of directories for newly created or renamed-in files.
pub(crate) struct SocketWatcher {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
}

/// Interest in one path; dropping it stops the notifications.
pub(crate) struct Watch {
    shared: Arc<Shared>,
    key: Key,
    generation: u64,
    notify: Arc<Notify>,
}

impl Watch {
    /// Resolves after a file of the watched name appeared since the watch
    /// was made or since the previous call returned.
    pub async fn appeared(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watches = self.shared.lock();
        if watches
            .waiters
            .get(&self.key)
            .is_some_and(|n| Arc::ptr_eq(n, &self.notify))
        {
            watches.waiters.remove(&self.key);
        }
        let wd = self.key.0;
        if let Some((generation, users)) = watches.directories.get_mut(&wd) {
            if *generation == self.generation {
                *users -= 1;
                if *users == 0 {
                    watches.directories.remove(&wd);
                    // Fails harmlessly if the directory is already gone.
                    let _ = inotify::remove_watch(&self.shared.fd, wd);
                }
            }
        }
    }
}

impl SocketWatcher {
    /// Creates the inotify instance and its reader task on the current
    /// runtime.
    pub fn new() -> io::Result<Self> {
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)?;
        let shared = Arc::new(Shared {
            // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it
            // until drop; nothing else can close or replace it.
            fd: unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?,
            watches: Mutex::new(Watches::default()),
        });
        let reader = tokio::spawn(read_events(Arc::clone(&shared)));
        Ok(SocketWatcher { shared, reader })
    }

    /// Starts watching for `path` to appear. Its directory must exist.
    pub fn watch(&self, path: &Path) -> io::Result<Watch> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("/"),
        };
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        // Under the lock, so a concurrent drop cannot remove the watch
        // between add_watch and the count going up. add_watch on a
        // directory already watched returns the same descriptor.
        let mut watches = self.shared.lock();
        let wd = inotify::add_watch(
            &self.shared.fd,
            dir,
            inotify::WatchFlags::CREATE
                | inotify::WatchFlags::MOVED_TO
                | inotify::WatchFlags::ONLYDIR,
        )?;
        let key = (wd, name.to_owned());
        let notify = Arc::new(Notify::new());
        let next_generation = watches.next_generation;
        let (generation, users) = watches
            .directories
            .entry(wd)
            .or_insert((next_generation, 0));
        let generation = *generation;
        *users += 1;
        if generation == next_generation {
            watches.next_generation += 1;
        }
        watches.waiters.insert(key.clone(), Arc::clone(&notify));
        drop(watches);
        Ok(Watch {
            shared: Arc::clone(&self.shared),
            key,
            generation,
            notify,
        })
    }
}

impl Drop for SocketWatcher {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_events(shared: Arc<Shared>) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
    loop {
        let Ok(mut guard) = shared.fd.readable().await else {
            return;
        };
        let mut reader = inotify::Reader::new(guard.get_inner(), &mut buf);
        loop {
            match reader.next() {
                Ok(event) => {
                    let mut watches = shared.lock();
                    if event.events().contains(inotify::ReadFlags::IGNORED) {
                        // The directory is gone and the kernel dropped the
                        // watch; its descriptor may be handed out again.
                        watches.directories.remove(&event.wd());
                        continue;
                    }
                    let Some(name) = event.file_name() else {
                        continue;
                    };
                    if let Some(notify) = watches.waiters.get(&(event.wd(), name_of(name))) {
                        notify.notify_one();
                    }
                }
                Err(rustix::io::Errno::AGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "inotify read failed; readiness falls back to polling");
                    return;
                }
            }
        }
    }
}

fn name_of(name: &CStr) -> OsString {
    OsStr::from_bytes(name.to_bytes()).to_owned()
}
