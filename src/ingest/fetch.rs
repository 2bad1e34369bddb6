//! Fetching one feed over HTTP: conditional GET, timeouts, a body cap counted after
//! decompression, redirects through the SSRF guard.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};

use super::FeedError;
use super::guard::{Guard, GuardError};
use crate::config::IngestConfig;

/// The HTTP client every feed of one run shares.
pub struct Fetcher {
    client: reqwest::Client,
    guard: Arc<Guard>,
    max_body_bytes: u64,
    timeout: Duration,
}

/// The feed fetcher's HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot set up the HTTP client that fetches feeds ({0}); check the system's CA certificates (/etc/ssl/certs, or the file SSL_CERT_FILE names) and the open-file limit"
)]
pub struct FetcherError(String);

/// What the server said, when it said something usable.
pub enum Fetched {
    /// `304 Not Modified`: nothing to parse. May carry fresh validators.
    NotModified(Validators),
    /// A full answer.
    Body {
        /// The body, decompressed, at most `max_body_bytes`.
        bytes: Vec<u8>,
        /// The `charset` of the `Content-Type`, if any.
        charset: Option<String>,
        /// The URL the body came from, after redirects.
        final_url: url::Url,
        /// Validators for the next conditional GET.
        validators: Validators,
    },
}

/// `ETag` and `Last-Modified`, as the server sent them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// For `If-None-Match`.
    pub etag: Option<String>,
    /// For `If-Modified-Since`.
    pub last_modified: Option<String>,
}

impl Validators {
    fn from_headers(headers: &HeaderMap) -> Validators {
        let get = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.len() <= 512)
                .map(str::to_string)
        };
        Validators {
            etag: get(header::ETAG),
            last_modified: get(header::LAST_MODIFIED),
        }
    }
}

impl Fetcher {
    /// A client configured from `[ingest]`. Building it reads the system's CA
    /// certificates, so it is built once and shared by every poll; a failure names
    /// the cause.
    pub fn new(config: &IngestConfig) -> Result<Fetcher, FetcherError> {
        crate::install_crypto_provider();
        let guard = Arc::new(Guard::new(
            config.allow_private,
            config.trusted_hosts.clone(),
        ));
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout.min(config.timeout))
            .redirect(guard.redirect_policy(config.max_redirects))
            .dns_resolver(guard.resolver())
            // A proxy from the environment would connect on herald's behalf, past the guard.
            .no_proxy()
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetcherError(root_cause(&e)))?;
        Ok(Fetcher {
            client,
            guard,
            max_body_bytes: config.max_body_bytes,
            timeout: config.timeout,
        })
    }

    /// GETs `url`, conditionally when `known` holds validators from the last answer.
    pub async fn fetch(&self, url: &url::Url, known: &Validators) -> Result<Fetched, FeedError> {
        let refused = |reason| FeedError::Refused {
            url: url.to_string(),
            reason,
        };
        self.guard.check_url(url).map_err(refused)?;
        let mut request = self
            .client
            .get(url.clone())
            .header(
                header::ACCEPT,
                "application/rss+xml, application/atom+xml, application/feed+json, application/json;q=0.9, application/xml;q=0.9, text/xml;q=0.8, */*;q=0.5",
            );
        if let Some(etag) = &known.etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        if let Some(date) = &known.last_modified {
            request = request.header(header::IF_MODIFIED_SINCE, date);
        }
        let mut response = request.send().await.map_err(|e| self.describe(url, &e))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            let fresh = Validators::from_headers(response.headers());
            return Ok(Fetched::NotModified(Validators {
                etag: fresh.etag.or_else(|| known.etag.clone()),
                last_modified: fresh.last_modified.or_else(|| known.last_modified.clone()),
            }));
        }
        if !status.is_success() {
            return Err(FeedError::Status {
                url: url.to_string(),
                status: status.to_string(),
                retry_after: retry_after(response.headers()),
            });
        }
        let too_large = || FeedError::TooLarge {
            url: url.to_string(),
            limit: self.max_body_bytes,
        };
        // Decompressed responses carry no length; a plain one can be refused unread.
        if response
            .content_length()
            .is_some_and(|n| n > self.max_body_bytes)
        {
            return Err(too_large());
        }
        let validators = Validators::from_headers(response.headers());
        let charset = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(charset_of);
        let final_url = response.url().clone();
        let mut bytes = Vec::new();
        // Chunks arrive decompressed: the cap holds for gzip and brotli bombs too.
        while let Some(chunk) = response.chunk().await.map_err(|e| self.describe(url, &e))? {
            if (bytes.len() + chunk.len()) as u64 > self.max_body_bytes {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched::Body {
            bytes,
            charset,
            final_url,
            validators,
        })
    }

    /// Turns a client error into the sentence the operator sees.
    fn describe(&self, url: &url::Url, error: &reqwest::Error) -> FeedError {
        // The guard's own refusal travels inside the client's error.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = source {
            if let Some(reason) = e.downcast_ref::<GuardError>() {
                return FeedError::Refused {
                    url: url.to_string(),
                    reason: reason.clone(),
                };
            }
            source = e.source();
        }
        let message = if error.is_timeout() {
            return FeedError::Timeout {
                url: url.to_string(),
                after: self.timeout,
            };
        } else if error.is_connect() {
            format!("cannot connect ({})", root_cause(error))
        } else if error.is_decode() || error.is_body() {
            format!("the body could not be read ({})", root_cause(error))
        } else {
            root_cause(error)
        };
        FeedError::Http {
            url: url.to_string(),
            message,
        }
    }
}

/// The innermost error message, which says what actually went wrong.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// `Retry-After` in seconds (the date form is rare for feeds and ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The `charset` parameter of a `Content-Type` value.
fn charset_of(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charset_is_read_from_the_content_type() {
        assert_eq!(
            charset_of("application/rss+xml; charset=ISO-8859-1").as_deref(),
            Some("ISO-8859-1")
        );
        assert_eq!(
            charset_of("text/xml;Charset=\"utf-8\"").as_deref(),
            Some("utf-8")
        );
        assert_eq!(charset_of("text/xml"), None);
    }
}
