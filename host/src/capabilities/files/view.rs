//! The `files` capability as one plugin instance holds it: the plugin's grant, when it has one,
//! and the `files` interface's host implementation, which runs every operation off the async
//! threads (an fsync may take long).

use super::FilesGrant;
use crate::bindings::v2::files::{FileError, Host};
use std::sync::Arc;

/// The `files` capability of one plugin instance.
pub struct FilesCtx {
    plugin: String,
    grant: Option<Arc<FilesGrant>>,
}

impl FilesCtx {
    /// `plugin`'s directory (`None`: not granted, or the load-time `info` call).
    pub fn new(plugin: &str, grant: Option<Arc<FilesGrant>>) -> Self {
        FilesCtx { plugin: plugin.to_string(), grant }
    }

    /// The plugin's granted directory.
    fn grant(&self) -> Result<Arc<FilesGrant>, FileError> {
        self.grant.clone().ok_or_else(|| {
            FileError::NotGranted(format!(
                "no directory is granted to plugin `{}`: an operator sets runtime.plugins.<file>.files_dir \
                 and grants \"files\"",
                self.plugin
            ))
        })
    }
}

/// Run `op` on a granted directory off the async threads (an fsync may take long).
async fn blocking<T: Send + 'static>(
    grant: Result<Arc<FilesGrant>, FileError>,
    op: impl FnOnce(&FilesGrant) -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    let grant = grant?;
    tokio::task::spawn_blocking(move || op(&grant))
        .await
        .unwrap_or_else(|e| Err(FileError::Io(format!("the file operation did not finish: {e}"))))
}

/// Every call goes to the plugin's `FilesGrant`.
impl Host for FilesCtx {
    async fn append(&mut self, path: String, data: Vec<u8>) -> Result<u64, FileError> {
        blocking(self.grant(), move |g| g.append(&path, &data)).await
    }
    async fn sync(&mut self, path: String) -> Result<(), FileError> {
        blocking(self.grant(), move |g| g.sync(&path)).await
    }
    async fn size(&mut self, path: String) -> Result<u64, FileError> {
        blocking(self.grant(), move |g| g.size(&path)).await
    }
    async fn created_at_ms(&mut self, path: String) -> Result<u64, FileError> {
        blocking(self.grant(), move |g| g.created_at_ms(&path)).await
    }
    async fn rename(&mut self, from: String, to: String) -> Result<(), FileError> {
        blocking(self.grant(), move |g| g.rename(&from, &to)).await
    }
    async fn entries(&mut self, path: String) -> Result<Vec<String>, FileError> {
        blocking(self.grant(), move |g| g.entries(&path)).await
    }
    async fn remove(&mut self, path: String) -> Result<(), FileError> {
        blocking(self.grant(), move |g| g.remove(&path)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_grant_every_call_is_not_granted_naming_the_settings() {
        let mut files = FilesCtx::new("p", None);
        match files.append("a".into(), b"x".to_vec()).await {
            Err(FileError::NotGranted(why)) => {
                assert!(why.contains("plugin `p`") && why.contains("files_dir") && why.contains("\"files\""), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(files.entries("".into()).await, Err(FileError::NotGranted(_))));
    }

    #[tokio::test]
    async fn calls_reach_the_granted_directory_and_its_quota() {
        let dir = tempfile::tempdir().unwrap();
        let grant = FilesGrant::open(dir.path(), 2 * super::super::BLOCK, 10, "file").unwrap();
        let mut files = FilesCtx::new("p", Some(Arc::new(grant)));
        assert_eq!(files.append("log/a".into(), b"hello".to_vec()).await.unwrap(), 5);
        files.sync("log/a".into()).await.unwrap();
        assert_eq!(files.size("log/a".into()).await.unwrap(), 5);
        assert_eq!(std::fs::read(dir.path().join("log/a")).unwrap(), b"hello");
        files.rename("log/a".into(), "log/b".into()).await.unwrap();
        assert_eq!(files.entries("log".into()).await.unwrap(), ["b"]);
        // The directory and the file take the two blocks: one more file is past the quota.
        assert!(matches!(files.append("c".into(), b"x".to_vec()).await, Err(FileError::QuotaExceeded(_))));
        files.remove("log/b".into()).await.unwrap();
        assert!(files.entries("log".into()).await.unwrap().is_empty());
        assert!(matches!(files.append("../escape".into(), b"x".to_vec()).await, Err(FileError::InvalidPath(_))));
    }
}
