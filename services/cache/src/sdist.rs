//! Finding and fetching source distributions (for `allow_source_builds`,
//! which builds pinned requirements only, and to tell "no wheel" from "no such package"), without pip: `pip download` prepares an
//! sdist's metadata, which runs its build backend, with network. Here the
//! file is only found and copied, never opened.
//!
//! Sources, as pip's install uses them: the `find_links` dirs (a file
//! `<name>-<version>.tar.gz` or `.zip`, the name as PEP 625 writes it or
//! any spelling that normalises the same), else the index's PEP 691 JSON
//! page, whose sha256 the download must match.
//!
//! Each sdist lands alone in `<data_dir>/sdists/<name>==<version>/`,
//! the dir sandboxd binds read-only into the build sandbox.
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::version::{Version, normalize_name};

/// Larger downloads are refused.
const MAX_SDIST_BYTES: u64 = 256 << 20;
const SUFFIXES: [&str; 2] = [".tar.gz", ".zip"];

/// An sdist in its own dir.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sdist {
    pub dir: PathBuf,
    pub file_name: String,
}

pub(crate) struct Sdists {
    root: PathBuf,
    tmp: PathBuf,
    find_links: Vec<PathBuf>,
    index_url: String,
    http: reqwest::Client,
}

impl Sdists {
    /// Blocking: creates `<data_dir>/sdists`.
    pub(crate) fn open(
        data_dir: &Path,
        tmp: &Path,
        find_links: Vec<PathBuf>,
        index_url: String,
    ) -> std::io::Result<Sdists> {
        let root = data_dir.join("sdists");
        std::fs::create_dir_all(&root)?;
        // TLS (rustls) for an https index such as PyPI; bounded, so a
        // stalled index fails the build instead of holding it forever.
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Sdists {
            root,
            tmp: tmp.to_path_buf(),
            find_links,
            index_url,
            http,
        })
    }

    /// The dir a source build of `name==version` reads from.
    pub(crate) fn dir(&self, name: &str, version: &str) -> PathBuf {
        self.root.join(format!("{name}=={version}"))
    }

    /// Whether the configured source has an sdist of `name` (normalised),
    /// at `version` or any.
    pub(crate) async fn exists(&self, name: &str, version: Option<&str>) -> Result<bool, String> {
        if self.find_links.is_empty() {
            let (_, files) = self.index_files(name).await?;
            Ok(files.iter().any(|f| matches(&f.filename, name, version)))
        } else {
            Ok(self
                .find_links
                .iter()
                .any(|links| find_in(links, name, version).is_some()))
        }
    }

    /// `name` (normalised) `==version`'s sdist in a dir of its own: the one
    /// fetched before, else from `find_links` or the index.
    pub(crate) async fn fetch(&self, name: &str, version: &str) -> Result<Sdist, String> {
        let dir = self.dir(name, version);
        if let Some(file_name) = find_in(&dir, name, Some(version)) {
            return Ok(Sdist { dir, file_name });
        }
        let staging = tempfile::Builder::new()
            .prefix("sdist-")
            .tempdir_in(&self.tmp)
            .map_err(|e| format!("cannot create a staging dir: {e}"))?;
        let file_name = if self.find_links.is_empty() {
            self.download(name, version, staging.path()).await?
        } else {
            let found = self
                .find_links
                .iter()
                .find_map(|links| Some((links, find_in(links, name, Some(version))?)));
            let Some((links, file_name)) = found else {
                return Err(format!(
                    "no sdist {name}-{version}.tar.gz (or .zip) in the find_links dirs"
                ));
            };
            std::fs::copy(links.join(&file_name), staging.path().join(&file_name))
                .map_err(|e| format!("cannot copy {file_name}: {e}"))?;
            file_name
        };
        readable(staging.path(), &file_name)
            .map_err(|e| format!("cannot make the sdist readable: {e}"))?;
        // A dir left by an interrupted fetch, or with another file, goes.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(staging.keep(), &dir)
            .map_err(|e| format!("cannot move the sdist into place: {e}"))?;
        Ok(Sdist { dir, file_name })
    }

    /// The files the index's PEP 691 JSON page lists for `name`, and the
    /// page's URL.
    async fn index_files(&self, name: &str) -> Result<(reqwest::Url, Vec<IndexFile>), String> {
        #[derive(serde::Deserialize)]
        struct Page {
            files: Vec<IndexFile>,
        }
        let page_url = format!("{}/{name}/", self.index_url.trim_end_matches('/'));
        let base = reqwest::Url::parse(&page_url)
            .map_err(|e| format!("index_url {:?} is not a URL: {e}", self.index_url))?;
        let fetch_err = |e: reqwest::Error| format!("cannot read {page_url}: {e}");
        let body = self
            .http
            .get(base.clone())
            .header(
                reqwest::header::ACCEPT,
                "application/vnd.pypi.simple.v1+json",
            )
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(fetch_err)?
            .bytes()
            .await
            .map_err(fetch_err)?;
        let page: Page = serde_json::from_slice(&body)
            .map_err(|e| format!("{page_url} is not a PEP 691 JSON page: {e}"))?;
        Ok((base, page.files))
    }

    /// From the index, checked against the sha256 it lists.
    async fn download(&self, name: &str, version: &str, into: &Path) -> Result<String, String> {
        let (base, listed) = self.index_files(name).await?;
        let mut files: Vec<&IndexFile> = listed
            .iter()
            .filter(|f| plain_file_name(&f.filename) && matches(&f.filename, name, Some(version)))
            .collect();
        // .tar.gz is the standard form (PEP 625); .zip only when alone.
        files.sort_by_key(|f| !f.filename.ends_with(".tar.gz"));
        let Some(file) = files.first() else {
            return Err(format!("the index lists no sdist of {name}=={version}"));
        };
        let Some(want) = file.hashes.get("sha256") else {
            return Err(format!("the index lists no sha256 for {}", file.filename));
        };
        let url = base
            .join(&file.url)
            .map_err(|e| format!("bad URL for {}: {e}", file.filename))?;
        let mut response = self
            .http
            .get(url.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("cannot download {url}: {e}"))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("cannot download {url}: {e}"))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > MAX_SDIST_BYTES {
                return Err(format!(
                    "{} is larger than {MAX_SDIST_BYTES} bytes",
                    file.filename
                ));
            }
        }
        let got = hex::encode(Sha256::digest(&bytes));
        if !got.eq_ignore_ascii_case(want) {
            return Err(format!(
                "{} has sha256 {got}, the index says {want}",
                file.filename
            ));
        }
        std::fs::write(into.join(&file.filename), &bytes)
            .map_err(|e| format!("cannot store {}: {e}", file.filename))?;
        Ok(file.filename.clone())
    }
}

#[derive(serde::Deserialize)]
struct IndexFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: std::collections::HashMap<String, String>,
}

/// The file in `dir` that is `name==version`'s sdist (sorted, so the
/// choice is stable), if any.
fn find_in(dir: &Path, name: &str, version: Option<&str>) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_type().ok()?.is_file().then_some(())?;
            e.file_name().into_string().ok()
        })
        .filter(|f| matches(f, name, version))
        .collect();
    names.sort_by(|a, b| (!a.ends_with(".tar.gz"), a).cmp(&(!b.ends_with(".tar.gz"), b)));
    names.into_iter().next()
}

/// Whether `file_name` is the sdist of `name` (normalised) at `version`
/// (None: any): `<name>-<version>.tar.gz` or `.zip`, the name spelled any
/// way that normalises to `name` (`Foo_Bar`, `foo-bar`, `foo.bar`).
fn matches(file_name: &str, name: &str, version: Option<&str>) -> bool {
    let Some(stem) = SUFFIXES
        .iter()
        .find_map(|suffix| file_name.strip_suffix(suffix))
    else {
        return false;
    };
    // Versions hold no `-` once normalised, so the last one splits.
    let Some((file_project, file_version)) = stem.rsplit_once('-') else {
        return false;
    };
    let Some(version) = version else {
        return normalize_name(file_project) == name;
    };
    normalize_name(file_project) == name
        && (file_version == version
            || matches!(
                (Version::parse(file_version), Version::parse(version)),
                (Some(a), Some(b)) if a == b
            ))
}

/// A bare file name: nothing that could point elsewhere.
pub(crate) fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+!".contains(c))
}

/// Sandboxes read the sdist as another uid.
fn readable(dir: &Path, file_name: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(dir.join(file_name), std::fs::Permissions::from_mode(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdist_names_match_however_the_project_is_spelled() {
        for file in [
            "foo_bar-1.0.tar.gz",
            "foo-bar-1.0.tar.gz",
            "Foo.Bar-1.0.zip",
            "FOO__bar-1.0.0.tar.gz",
        ] {
            assert!(matches(file, "foo-bar", Some("1.0")), "{file}");
            assert!(matches(file, "foo-bar", None), "{file}");
        }
        for file in [
            "foo_bar-1.1.tar.gz",
            "foo_bar-1.0-py3-none-any.whl",
            "foo_baz-1.0.tar.gz",
            "foo_bar-1.0.tar.bz2",
            "foobar-1.0.tar.gz",
        ] {
            assert!(!matches(file, "foo-bar", Some("1.0")), "{file}");
        }
    }

    fn sdists(find_links: Vec<PathBuf>) -> (tempfile::TempDir, Sdists) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        let sdists = Sdists::open(
            dir.path(),
            &tmp,
            find_links,
            "http://127.0.0.1:9/simple".into(),
        )
        .expect("open");
        (dir, sdists)
    }

    /// The real PyPI, over https: the one test here that needs the network.
    #[tokio::test]
    async fn network_pypi_an_sdist_comes_over_https_with_its_sha256_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        let sdists = Sdists::open(
            dir.path(),
            &tmp,
            Vec::new(),
            "https://pypi.org/simple".into(),
        )
        .expect("open");
        let got = sdists.fetch("six", "1.16.0").await.expect("six's sdist");
        assert_eq!(got.file_name, "six-1.16.0.tar.gz");
        let size = std::fs::metadata(got.dir.join(&got.file_name))
            .expect("kept")
            .len();
        assert!(size > 10_000, "{size} bytes");
    }

    #[tokio::test]
    async fn an_sdist_from_find_links_lands_alone_in_its_own_dir() {
        let links = tempfile::tempdir().expect("tempdir");
        for file in [
            "Foo_Bar-1.0.zip",
            "foo_bar-1.0.tar.gz",
            "foo_bar-1.0-py3-none-any.whl",
            "foo_bar-2.0.tar.gz",
            "other-1.0.tar.gz",
        ] {
            std::fs::write(links.path().join(file), file).expect("write");
        }
        let (_dir, sdists) = sdists(vec![links.path().to_path_buf()]);
        let got = sdists.fetch("foo-bar", "1.0").await.expect("found");
        assert_eq!(got.file_name, "foo_bar-1.0.tar.gz");
        assert_eq!(got.dir, sdists.dir("foo-bar", "1.0"));
        let held: Vec<_> = std::fs::read_dir(&got.dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(held, ["foo_bar-1.0.tar.gz"]);
        // Fetched once: the copy is reused even when the source is gone.
        std::fs::remove_file(links.path().join("foo_bar-1.0.tar.gz")).expect("rm");
        assert_eq!(sdists.fetch("foo-bar", "1.0").await.expect("again"), got);

        assert!(sdists.exists("foo-bar", Some("2.0")).await.expect("looked"));
        assert!(sdists.exists("other", None).await.expect("looked"));
        assert!(!sdists.exists("foo-bar", Some("3.0")).await.expect("looked"));
        let missing = sdists.fetch("foo-bar", "3.0").await.expect_err("none");
        assert!(missing.contains("no sdist foo-bar-3.0.tar.gz"), "{missing}");
    }

    /// A PEP 691 index on loopback: `foo-bar` lists a wheel and an sdist
    /// (correct sha256), `tampered` an sdist whose sha256 is wrong. Pages
    /// are served only to a client that asks for JSON.
    async fn serve_index() -> String {
        use axum::http::{StatusCode, header};
        use axum::response::IntoResponse;
        let sdist = b"foo-bar sdist".to_vec();
        let sha = hex::encode(Sha256::digest(&sdist));
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (sdist, sha) = (sdist.clone(), sha.clone());
            async move {
                let json = request
                    .headers()
                    .get(header::ACCEPT)
                    .is_some_and(|a| a == "application/vnd.pypi.simple.v1+json");
                let page = |files: serde_json::Value| match json {
                    true => serde_json::json!({"meta": {"api-version": "1.0"}, "files": files})
                        .to_string()
                        .into_response(),
                    false => StatusCode::NOT_ACCEPTABLE.into_response(),
                };
                match request.uri().path() {
                    "/simple/foo-bar/" => page(serde_json::json!([
                        {"filename": "foo_bar-1.0-py3-none-any.whl", "url": "/files/w", "hashes": {}},
                        {"filename": "foo_bar-1.0.tar.gz", "url": "../../files/foo_bar-1.0.tar.gz", "hashes": {"sha256": sha}},
                    ])),
                    "/simple/tampered/" => page(serde_json::json!([
                        {"filename": "tampered-1.0.tar.gz", "url": "/files/foo_bar-1.0.tar.gz", "hashes": {"sha256": "00"}},
                    ])),
                    "/files/foo_bar-1.0.tar.gz" => sdist.into_response(),
                    _ => StatusCode::NOT_FOUND.into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind index");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/simple/")
    }

    #[tokio::test]
    async fn an_sdist_from_an_index_is_checked_against_its_sha256() {
        let index = serve_index().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        let sdists = Sdists::open(dir.path(), &tmp, Vec::new(), index).expect("open");

        assert!(sdists.exists("foo-bar", Some("1.0")).await.expect("looked"));
        assert!(!sdists.exists("foo-bar", Some("2.0")).await.expect("looked"));
        let got = sdists.fetch("foo-bar", "1.0").await.expect("downloaded");
        assert_eq!(got.file_name, "foo_bar-1.0.tar.gz");
        assert_eq!(
            std::fs::read(got.dir.join(&got.file_name)).expect("stored"),
            b"foo-bar sdist"
        );

        let err = sdists.fetch("tampered", "1.0").await.expect_err("refused");
        assert!(err.contains("the index says 00"), "{err}");
        assert!(!sdists.dir("tampered", "1.0").exists(), "nothing kept");
        let err = sdists.fetch("missing", "1.0").await.expect_err("refused");
        assert!(err.contains("404"), "{err}");
    }

    #[test]
    fn sdist_file_names_from_an_index_are_plain() {
        assert!(plain_file_name("foo_bar-1.0.tar.gz"));
        for bad in ["", "../x.tar.gz", "a/b.tar.gz", ".hidden.tar.gz", "a b.zip"] {
            assert!(!plain_file_name(bad), "{bad:?}");
        }
    }
}
