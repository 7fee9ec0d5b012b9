//! Functions and their bundles in sled.
//!
//! Trees, all keyed by function name (bundles by name and version):
//! - `functions`: the latest `FunctionInfo`, prost-encoded;
//! - `previous`: the `FunctionInfo` of the version before it;
//! - `bundles`: `name \0 version(u64 BE)` → bundle bytes, for those two
//!   versions only;
//! - `counters`: the last version ever given out, kept across deletes so
//!   a version number (and so an ETag) is never reused.
//!
//! Every change is one transaction over the trees, flushed to disk before
//! the method returns. Methods block; callers run them off the runtime.
use std::path::Path;

use prost::Message;
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional};
use sock_proto::v1::{FunctionConfig, FunctionInfo};

use crate::error::Error;

pub(crate) struct Store {
    db: sled::Db,
    functions: sled::Tree,
    previous: sled::Tree,
    bundles: sled::Tree,
    counters: sled::Tree,
}

type TxResult<T> = Result<T, ConflictableTransactionError<Error>>;

impl Store {
    pub(crate) fn open(dir: &Path) -> Result<Store, Error> {
        let open_error = |source| Error::Open {
            path: dir.to_path_buf(),
            source,
        };
        // Every write is flushed explicitly, so no background flusher.
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .map_err(open_error)?;
        let tree = |name: &str| db.open_tree(name).map_err(open_error);
        Ok(Store {
            functions: tree("functions")?,
            previous: tree("previous")?,
            bundles: tree("bundles")?,
            counters: tree("counters")?,
            db,
        })
    }

    /// Stores an already validated bundle as the next version of `name`,
    /// keeping the version it replaces and dropping the one before that.
    pub(crate) fn push(
        &self,
        name: &str,
        bundle: &[u8],
        config: FunctionConfig,
        modified_unix_ms: i64,
    ) -> Result<FunctionInfo, Error> {
        let digest = Sha256::digest(bundle);
        let short = hex::encode(&digest[..8]);
        let trees = (
            &self.functions,
            &self.previous,
            &self.bundles,
            &self.counters,
        );
        let info = trees
            .transaction(|(functions, previous, bundles, counters)| {
                let last = match counters.get(name)? {
                    Some(raw) => decode_counter(name, &raw)?,
                    None => 0,
                };
                let version = last + 1;
                let info = FunctionInfo {
                    name: name.to_string(),
                    version,
                    etag: format!("\"{version}-{short}\""),
                    modified_unix_ms,
                    config: Some(config.clone()),
                    bundle_bytes: bundle.len() as u64,
                };
                // The current version becomes the previous one, and the
                // previous one's bundle goes.
                let dropped = match functions.get(name)? {
                    Some(current) => previous.insert(name, current)?,
                    None => None,
                };
                if let Some(dropped) = dropped {
                    remove_bundle_of(bundles, name, &dropped)?;
                }
                bundles.insert(bundle_key(name, version), bundle)?;
                functions.insert(name, info.encode_to_vec())?;
                counters.insert(name, &version.to_be_bytes())?;
                Ok(info)
            })
            .map_err(from_transaction)?;
        self.db.flush()?;
        Ok(info)
    }

    pub(crate) fn get(&self, name: &str) -> Result<FunctionInfo, Error> {
        match self.functions.get(name)? {
            Some(raw) => Ok(decode_info(name, &raw)?),
            None => Err(Error::NotFound(name.to_string())),
        }
    }

    /// The latest version's info and bundle, read together.
    pub(crate) fn latest(&self, name: &str) -> Result<(FunctionInfo, IVec), Error> {
        (&self.functions, &self.bundles)
            .transaction(|(functions, bundles)| {
                let Some(raw) = functions.get(name)? else {
                    return abort(Error::NotFound(name.to_string()));
                };
                let info = decode_info(name, &raw)?;
                match bundles.get(bundle_key(name, info.version))? {
                    Some(bundle) => Ok((info, bundle)),
                    None => abort(corrupt(name, "its bundle is missing")),
                }
            })
            .map_err(from_transaction)
    }

    /// Every function, ordered by name.
    pub(crate) fn list(&self) -> Result<Vec<FunctionInfo>, Error> {
        self.functions
            .iter()
            .map(|item| {
                let (key, raw) = item?;
                decode_info(&String::from_utf8_lossy(&key), &raw).map_err(Into::into)
            })
            .collect::<Result<_, Error>>()
    }

    /// Removes a function and its bundles. Its version counter stays.
    pub(crate) fn delete(&self, name: &str) -> Result<(), Error> {
        (&self.functions, &self.previous, &self.bundles)
            .transaction(|(functions, previous, bundles)| {
                let Some(current) = functions.remove(name)? else {
                    return abort(Error::NotFound(name.to_string()));
                };
                remove_bundle_of(bundles, name, &current)?;
                if let Some(before) = previous.remove(name)? {
                    remove_bundle_of(bundles, name, &before)?;
                }
                Ok(())
            })
            .map_err(from_transaction)?;
        self.db.flush()?;
        Ok(())
    }
}

fn remove_bundle_of(bundles: &TransactionalTree, name: &str, info: &[u8]) -> TxResult<()> {
    bundles.remove(bundle_key(name, decode_info(name, info)?.version))?;
    Ok(())
}

/// Names hold no NUL (see `validate_name`), so `name\0` prefixes are exact.
fn bundle_key(name: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 9);
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn decode_info(name: &str, raw: &[u8]) -> Result<FunctionInfo, Corrupt> {
    FunctionInfo::decode(raw).map_err(|e| Corrupt(corrupt(name, &e.to_string())))
}

fn decode_counter(name: &str, raw: &[u8]) -> Result<u64, Corrupt> {
    let bytes = <[u8; 8]>::try_from(raw)
        .map_err(|_| Corrupt(corrupt(name, "its version counter is not 8 bytes")))?;
    Ok(u64::from_be_bytes(bytes))
}

fn corrupt(name: &str, reason: &str) -> Error {
    Error::Corrupt {
        name: name.to_string(),
        reason: reason.to_string(),
    }
}

/// A corrupt record found inside or outside a transaction: it aborts the
/// one and is an `Error` in the other.
struct Corrupt(Error);

impl From<Corrupt> for ConflictableTransactionError<Error> {
    fn from(c: Corrupt) -> Self {
        ConflictableTransactionError::Abort(c.0)
    }
}

impl From<Corrupt> for Error {
    fn from(c: Corrupt) -> Self {
        c.0
    }
}

fn abort<T>(error: Error) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

fn from_transaction(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => Error::Storage(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("db")).expect("open");
        (dir, store)
    }

    fn push(store: &Store, name: &str, bundle: &[u8]) -> FunctionInfo {
        store
            .push(name, bundle, FunctionConfig::default(), 1_700_000_000_000)
            .expect("push")
    }

    #[test]
    fn versions_count_up_and_etags_name_version_and_content() {
        let (_dir, store) = store();
        let one = push(&store, "f", b"one");
        let two = push(&store, "f", b"two");
        assert_eq!((one.version, two.version), (1, 2));
        // sha256("one") starts 7692c3ad3540bb80.
        assert_eq!(one.etag, "\"1-7692c3ad3540bb80\"");
        assert!(two.etag.starts_with("\"2-") && two.etag != one.etag);
        assert_eq!(store.get("f").expect("get"), two);
        assert_eq!(&*store.latest("f").expect("latest").1, b"two");
    }

    #[test]
    fn keeps_the_previous_bundle_and_no_more() {
        let (_dir, store) = store();
        for data in [b"v1", b"v2", b"v3", b"v4"] {
            push(&store, "f", data);
        }
        let kept: Vec<Vec<u8>> = store
            .bundles
            .iter()
            .values()
            .map(|v| v.expect("value").to_vec())
            .collect();
        assert_eq!(kept, [b"v3".to_vec(), b"v4".to_vec()]);
        let previous = store
            .previous
            .get("f")
            .expect("get")
            .expect("previous kept");
        assert_eq!(
            decode_info("f", &previous)
                .map_err(|c| c.0)
                .expect("decodes")
                .version,
            3
        );
    }

    #[test]
    fn delete_removes_everything_but_the_counter() {
        let (_dir, store) = store();
        push(&store, "f", b"v1");
        push(&store, "f", b"v2");
        push(&store, "g", b"other");
        store.delete("f").expect("delete");
        assert!(matches!(store.get("f"), Err(Error::NotFound(_))));
        assert!(matches!(store.latest("f"), Err(Error::NotFound(_))));
        assert!(matches!(store.delete("f"), Err(Error::NotFound(_))));
        assert_eq!(store.bundles.len(), 1, "only g's bundle is left");
        assert_eq!(
            push(&store, "f", b"again").version,
            3,
            "versions are never reused"
        );
        let names: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["f", "g"]);
    }

    #[test]
    fn names_sharing_a_prefix_do_not_mix() {
        let (_dir, store) = store();
        push(&store, "f", b"f1");
        push(&store, "f1", b"other");
        push(&store, "f", b"f2");
        store.delete("f").expect("delete");
        assert_eq!(&*store.latest("f1").expect("f1 kept").1, b"other");
    }
}
