//! Functions and their bundles in sled.
//!
//! Trees, all keyed by function name (bundles by name and version):
//! - `functions`: the latest `FunctionInfo`, prost-encoded;
//! - `previous`: the `FunctionInfo` of the version before it;
//! - `bundles`: `name \0 version(u64 BE)` → bundle bytes, for those two
//!   versions only;
//! - `counters`: the last version ever given out, kept across deletes so
//!   a version number (and so an ETag) is never reused;
//! - `firings`: `fire time(i64 BE, ms) name \0 schedule` → holder, one
//!   claim per firing of a cron trigger, kept for `CLAIM_RETENTION_MS`
//!   (keyed by time first, so pruning reads only what it removes).
//!
//! Every change of functions is one transaction over the trees, flushed
//! to disk before the method returns (claims are not: see `claim_firing`). Methods block; callers run them off the runtime.
//!
//! A cron claim is one sled `compare_and_swap` from empty: of any number of
//! concurrent claimants exactly one wins, and the same holder asking again
//! wins again (a retried call). This is the lease the gateways' cron
//! schedulers share: one record per firing, none between firings.
use std::path::Path;

use prost::Message;
use sha2::{Digest, Sha256};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional};
use sock_proto::v1::{FunctionConfig, FunctionInfo};

use crate::error::{Error, StartError};

pub(crate) struct Store {
    /// Where sled keeps its files, and the space kept free on their disk.
    dir: std::path::PathBuf,
    min_free: u64,
    db: sled::Db,
    functions: sled::Tree,
    previous: sled::Tree,
    bundles: sled::Tree,
    counters: sled::Tree,
    firings: sled::Tree,
}

/// How long a claim is kept. A claim of a fire time older than this is
/// refused, since its record may be gone: a gateway that slept through
/// it must not fire it a second time. Gateways fire within moments of a
/// fire time, so an hour leaves room for slow calls and clock skew.
pub(crate) const CLAIM_RETENTION_MS: i64 = 60 * 60 * 1000;

/// Files kept free on the store's disk: sled makes one per large bundle.
const MIN_FREE_INODES: u64 = 64;

type TxResult<T> = Result<T, ConflictableTransactionError<Error>>;

impl Store {
    pub(crate) fn open(dir: &Path, min_free: u64) -> Result<Store, StartError> {
        let open_error = |source| StartError::Open {
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
            dir: dir.to_path_buf(),
            min_free,
            functions: tree("functions")?,
            previous: tree("previous")?,
            bundles: tree("bundles")?,
            counters: tree("counters")?,
            firings: tree("firings")?,
            db,
        })
    }

    /// Refuses a push of `bundle_bytes` that would leave less than
    /// `min_free` on the store's disk, or fewer than [`MIN_FREE_INODES`]
    /// files. sled writes the bundle to its log or a blob file of its own
    /// and may write it again when it compacts, so twice its size is
    /// counted. A write that meets a full disk leaves sled failing, or
    /// hanging on, what follows, so it must not be attempted.
    fn check_room(&self, bundle_bytes: u64) -> Result<(), Error> {
        let disk = nix::sys::statvfs::statvfs(&self.dir).map_err(Error::FreeSpace)?;
        let free = disk.blocks_available().saturating_mul(disk.fragment_size());
        let free_inodes = disk.files_available();
        // A file system that counts no inodes (btrfs) reports 0 files.
        let counts_inodes = disk.files() > 0;
        if free < bundle_bytes.saturating_mul(2).saturating_add(self.min_free)
            || (counts_inodes && free_inodes < MIN_FREE_INODES)
        {
            let mb = |bytes: u64| bytes.div_ceil(1 << 20);
            return Err(Error::DiskFull {
                free_mb: free >> 20,
                free_inodes,
                bundle_mb: mb(bundle_bytes),
                keep_mb: mb(self.min_free),
            });
        }
        Ok(())
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
        self.check_room(bundle.len() as u64)?;
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

    /// Version `asked` of `name` (the current one or the one before it),
    /// its info and bundle read together: a version never changes, so a
    /// node that prepares exactly the version a gateway resolved gets it
    /// even after a newer push.
    pub(crate) fn version(&self, name: &str, asked: u64) -> Result<(FunctionInfo, IVec), Error> {
        (&self.functions, &self.previous, &self.bundles)
            .transaction(|(functions, previous, bundles)| {
                let Some(raw) = functions.get(name)? else {
                    return abort(Error::NotFound(name.to_string()));
                };
                let current = decode_info(name, &raw)?;
                let before = match previous.get(name)? {
                    Some(raw) => Some(decode_info(name, &raw)?),
                    None => None,
                };
                let current_version = current.version;
                let Some(info) = [Some(current), before]
                    .into_iter()
                    .flatten()
                    .find(|info| info.version == asked)
                else {
                    return abort(Error::VersionNotKept {
                        name: name.to_string(),
                        asked,
                        current: current_version,
                    });
                };
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

impl Store {
    /// Claims the firing of `name`'s `schedule` at `fire_at_unix_ms` for
    /// `holder`: true for the first holder to ask (and for it again), false
    /// for every other, and for a fire time past `CLAIM_RETENTION_MS`
    /// before `now_unix_ms`. One compare-and-swap, so of two concurrent
    /// claimants exactly one wins. Not flushed: gateways ask for a fire
    /// time within milliseconds of each other and never for a past one, so
    /// a claim lost in a crash is never asked for again, and an fsync per
    /// claim (every gateway, every fire time) would queue pushes behind
    /// it on a busy disk. Claims past the retention are pruned on the way.
    pub(crate) fn claim_firing(
        &self,
        name: &str,
        schedule: &str,
        fire_at_unix_ms: i64,
        holder: &str,
        now_unix_ms: i64,
    ) -> Result<bool, Error> {
        let oldest = now_unix_ms.saturating_sub(CLAIM_RETENTION_MS);
        self.prune_firings(oldest)?;
        if fire_at_unix_ms < oldest {
            return Ok(false);
        }
        let key = firing_key(name, schedule, fire_at_unix_ms);
        let claimed =
            match self
                .firings
                .compare_and_swap(&key, None::<&[u8]>, Some(holder.as_bytes()))?
            {
                Ok(()) => true,
                Err(held) => held.current.is_some_and(|h| h == holder.as_bytes()),
            };
        Ok(claimed)
    }

    /// Drops claims of fire times before `oldest`.
    fn prune_firings(&self, oldest: i64) -> Result<(), Error> {
        for key in self.firings.range(..time_key(oldest).to_vec()).keys() {
            self.firings.remove(key?)?;
        }
        Ok(())
    }
}

/// Fire times sort as their keys do: the sign bit flipped makes a signed
/// big-endian number order as unsigned bytes.
fn time_key(unix_ms: i64) -> [u8; 8] {
    (u64::from_be_bytes(unix_ms.to_be_bytes()) ^ (1 << 63)).to_be_bytes()
}

/// Names hold no NUL; a schedule is the rest of the key, so two
/// schedules of one name cannot collide either.
fn firing_key(name: &str, schedule: &str, fire_at_unix_ms: i64) -> Vec<u8> {
    let mut key = time_key(fire_at_unix_ms).to_vec();
    key.extend_from_slice(name.as_bytes());
    key.push(0);
    key.extend_from_slice(schedule.as_bytes());
    key
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
        let store = Store::open(&dir.path().join("db"), 0).expect("open");
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

    const NOW: i64 = 1_764_558_000_000;

    #[test]
    fn a_firing_is_claimed_once() {
        let (_dir, store) = store();
        let claim = |holder: &str, schedule: &str, at: i64| {
            store
                .claim_firing("f", schedule, at, holder, NOW)
                .expect("claim")
        };
        assert!(claim("a", "* * * * *", NOW));
        assert!(!claim("b", "* * * * *", NOW), "the second claimant loses");
        assert!(claim("a", "* * * * *", NOW), "the winner asking again wins");
        assert!(
            claim("b", "* * * * *", NOW + 60_000),
            "the next fire time is free"
        );
        assert!(
            claim("b", "*/2 * * * *", NOW),
            "another schedule is another firing"
        );
        assert!(
            store
                .claim_firing("g", "* * * * *", NOW, "b", NOW)
                .expect("claim"),
            "another function's firing is its own"
        );
    }

    #[test]
    fn concurrent_claimants_have_one_winner() {
        let (_dir, store) = store();
        for at in 0..20 {
            let fire_at = NOW + at * 1000;
            let winners = std::thread::scope(|scope| {
                let claims: Vec<_> = (0..4)
                    .map(|holder| {
                        let store = &store;
                        scope.spawn(move || {
                            store
                                .claim_firing("f", "* * * * * *", fire_at, &holder.to_string(), NOW)
                                .expect("claim")
                        })
                    })
                    .collect();
                claims
                    .into_iter()
                    .map(|c| c.join().expect("claimant"))
                    .filter(|won| *won)
                    .count()
            });
            assert_eq!(winners, 1, "fire time {fire_at}");
        }
    }

    #[test]
    fn old_claims_are_pruned_and_old_fire_times_refused() {
        let (_dir, store) = store();
        let old = NOW - CLAIM_RETENTION_MS;
        assert!(
            store
                .claim_firing("f", "s", old - 1, "a", old + 1)
                .expect("claim")
        );
        assert!(
            store
                .claim_firing("f", "s", old, "a", old + 1)
                .expect("claim")
        );
        assert_eq!(store.firings.len(), 2);
        // An hour later the first is past the retention, the second not.
        assert!(store.claim_firing("f", "s", NOW, "a", NOW).expect("claim"));
        assert_eq!(store.firings.len(), 2, "one pruned, one added");
        assert!(
            !store
                .claim_firing("f", "s", old - 1, "b", NOW)
                .expect("claim"),
            "a pruned firing is not given out again"
        );
        assert!(!store.claim_firing("f", "s", old, "b", NOW).expect("claim"));
    }

    #[test]
    fn fire_times_before_1970_sort_before_later_ones() {
        let (_dir, store) = store();
        for at in [5, -5, 0] {
            assert!(store.claim_firing("f", "s", at, "a", 0).expect("claim"));
        }
        store.prune_firings(0).expect("prune");
        assert!(
            store
                .firings
                .get(firing_key("f", "s", -5))
                .expect("get")
                .is_none()
        );
        assert!(
            store
                .firings
                .get(firing_key("f", "s", 0))
                .expect("get")
                .is_some()
        );
        assert!(
            store
                .firings
                .get(firing_key("f", "s", 5))
                .expect("get")
                .is_some()
        );
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
