//! A file system that is another one with each opened file wrapped: a test
//! that gates or counts file operations writes only its file wrapper, and
//! every other operation (including those the `Vfs` trait gains later)
//! goes straight to the inner file system.

use std::any::Any;
use std::io;
use std::path::Path;
use std::sync::Arc;

use spool::storage::{Open, VFile, Vfs};

type Wrapper = dyn Fn(&Path, Arc<dyn VFile>) -> Arc<dyn VFile> + Send + Sync;

pub struct WrapFs {
    inner: Arc<dyn Vfs>,
    wrap: Box<Wrapper>,
}

impl WrapFs {
    /// `inner`, with `wrap(path, file)` standing for each file it opens, as
    /// a file system to hand to a log or a broker.
    pub fn shared(
        inner: Arc<dyn Vfs>,
        wrap: impl Fn(&Path, Arc<dyn VFile>) -> Arc<dyn VFile> + Send + Sync + 'static,
    ) -> Arc<dyn Vfs> {
        Arc::new(WrapFs {
            inner,
            wrap: Box::new(wrap),
        })
    }
}

impl std::fmt::Debug for WrapFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrapFs")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Vfs for WrapFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn is_dir(&self, path: &Path) -> bool {
        self.inner.is_dir(path)
    }
    fn open(&self, path: &Path, how: Open) -> io::Result<Arc<dyn VFile>> {
        Ok((self.wrap)(path, self.inner.open(path, how)?))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn replace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.replace(from, to)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.inner.lock(path)
    }
}
