//! The registry's HTTP bundle store, as the cache sees it: one conditional
//! `GET /functions/<name>` per check of the latest version, or one
//! `GET /functions/<name>/versions/<n>` for exactly version n.
use std::error::Error as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{
    AUTHORIZATION, ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};

use crate::error::{Error, StartError};

/// Header carrying the version of the bundle in a 200 answer.
const VERSION_HEADER: &str = "x-sock-version";

/// Of the registry's 404 text, what goes into our error.
const MAX_REASON_CHARS: usize = 300;

pub(crate) struct Registry {
    http: reqwest::Client,
    /// `registry_url` without a trailing slash.
    base: String,
}

/// Validators of the copy we hold, so the registry can answer 304.
#[derive(Clone, Debug, Default)]
pub(crate) struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

pub(crate) enum Fetched {
    NotModified,
    Bundle(Download),
}

/// A bundle as the registry sent it; nothing on disk yet.
pub(crate) struct Download {
    pub version: u64,
    pub validators: Validators,
    pub body: Bytes,
}

impl Registry {
    /// A client of the bundle store at `registry_url`, sending the node
    /// token (the store answers nobody else).
    pub(crate) fn new(
        registry_url: &str,
        node_token: Option<&sock_service::Secret>,
    ) -> Result<Registry, StartError> {
        let url = reqwest::Url::parse(registry_url).map_err(|e| StartError::RegistryUrl {
            url: registry_url.to_string(),
            reason: e.to_string(),
        })?;
        // Built without TLS: the registry is reached over the node's
        // private network, like every other sock service.
        if url.scheme() != "http" {
            return Err(StartError::RegistryUrl {
                url: registry_url.to_string(),
                reason: "only http:// URLs are supported".into(),
            });
        }
        let mut headers = HeaderMap::new();
        if let Some(token) = node_token.map(|t| t.expose()).filter(|t| !t.is_empty()) {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                StartError::InvalidConfig("node_token must be printable ASCII".into())
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            // The registry is internal; an HTTP_PROXY meant for the
            // outside world must not capture it.
            .no_proxy()
            .build()
            .map_err(StartError::HttpClient)?;
        Ok(Registry {
            http,
            base: registry_url.trim_end_matches('/').to_string(),
        })
    }

    /// Asks for `name`'s latest bundle, unless it is still the one `have`
    /// describes. `name` must already be validated: it goes into the URL
    /// as is.
    #[tracing::instrument(name = "registry.fetch", skip_all, fields(function = %name, status))]
    pub(crate) async fn fetch(&self, name: &str, have: &Validators) -> Result<Fetched, Error> {
        let mut headers = HeaderMap::new();
        if let Some(value) = have
            .etag
            .as_deref()
            .and_then(|e| HeaderValue::from_str(e).ok())
        {
            headers.insert(IF_NONE_MATCH, value);
        }
        if let Some(time) = have.last_modified {
            let value = HeaderValue::from_str(&httpdate::fmt_http_date(time))
                .expect("an HTTP date is a valid header value");
            headers.insert(IF_MODIFIED_SINCE, value);
        }
        let response = self
            .get(name, &format!("functions/{name}"), headers)
            .await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified),
            StatusCode::NOT_FOUND => Err(Error::NotFound {
                name: name.to_string(),
            }),
            _ => Ok(Fetched::Bundle(download(name, response).await?)),
        }
    }

    /// Asks for exactly `version` of `name` (validated, as for `fetch`): a
    /// version never changes, so there is nothing to revalidate.
    #[tracing::instrument(name = "registry.fetch", skip_all, fields(function = %name, version, status))]
    pub(crate) async fn fetch_version(&self, name: &str, version: u64) -> Result<Download, Error> {
        let response = self
            .get(
                name,
                &format!("functions/{name}/versions/{version}"),
                HeaderMap::new(),
            )
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            // The registry says which: no such function, or not this
            // version (superseded twice, or not pushed yet).
            let reason = response.text().await.unwrap_or_default();
            return Err(Error::VersionNotKept {
                name: name.to_string(),
                asked: version,
                reason: reason.chars().take(MAX_REASON_CHARS).collect(),
            });
        }
        let fetched = download(name, response).await?;
        if fetched.version != version {
            return Err(Error::RegistryProtocol {
                name: name.to_string(),
                reason: format!("asked for version {version}, got {}", fetched.version),
            });
        }
        Ok(fetched)
    }

    /// One GET of `path` under the store, about function `name`; a status
    /// that is neither a bundle, a 304 nor a 404 is an error here.
    async fn get(
        &self,
        name: &str,
        path: &str,
        mut headers: HeaderMap,
    ) -> Result<reqwest::Response, Error> {
        sock_telemetry::http::inject_context(&mut headers);
        let response = self
            .http
            .get(format!("{}/{path}", self.base))
            .headers(headers)
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        tracing::Span::current().record("status", status.as_u16());
        match status {
            StatusCode::OK | StatusCode::NOT_MODIFIED | StatusCode::NOT_FOUND => Ok(response),
            StatusCode::UNAUTHORIZED => Err(Error::RegistryProtocol {
                name: name.to_string(),
                reason: "the registry refused the cache's node token (401): give both the same \
                         node_token"
                    .into(),
            }),
            s if s.is_server_error() => Err(Error::RegistryUnavailable {
                reason: format!("the registry answered {s}"),
            }),
            s => Err(Error::RegistryProtocol {
                name: name.to_string(),
                reason: format!("unexpected status {s}"),
            }),
        }
    }
}

/// The bundle of a 200 answer.
async fn download(name: &str, response: reqwest::Response) -> Result<Download, Error> {
    let version = version_of(response.headers()).ok_or_else(|| Error::RegistryProtocol {
        name: name.to_string(),
        reason: "missing or invalid X-Sock-Version header".into(),
    })?;
    let validators = Validators {
        etag: header_str(response.headers(), &ETAG).map(str::to_string),
        last_modified: header_str(response.headers(), &LAST_MODIFIED)
            .and_then(|v| httpdate::parse_http_date(v).ok()),
    };
    let body = response.bytes().await.map_err(unavailable)?;
    Ok(Download {
        version,
        validators,
        body,
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &reqwest::header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn version_of(headers: &HeaderMap) -> Option<u64> {
    header_str(
        headers,
        &reqwest::header::HeaderName::from_static(VERSION_HEADER),
    )?
    .trim()
    .parse()
    .ok()
}

/// The whole cause chain, which is where "connection refused" lives, but
/// not the URL.
fn unavailable(err: reqwest::Error) -> Error {
    let err = err.without_url();
    let mut reason = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = cause.source();
    }
    Error::RegistryUnavailable { reason }
}
