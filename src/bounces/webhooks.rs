//! The relays' webhooks, read into [`BounceReport`]s: Mailgun's (an HMAC-SHA256 over
//! timestamp and token with the signing key) and Amazon SES's through SNS (an RSA
//! signature by a certificate fetched from an allowed host). Only what is signed is
//! believed; the HTTP side is in `crate::web::webhooks`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{AlgorithmIdentifier, CertificateDer, InvalidSignature};
use rustls::pki_types::{SignatureVerificationAlgorithm, alg_id};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;

use super::{BounceKind, BounceReport, BounceSource};
use crate::config::BouncesConfig;
use crate::domain::Timestamp;

/// How old (or how far ahead) a Mailgun timestamp may be.
pub const MAILGUN_MAX_AGE_SECS: i64 = 300;

/// The largest certificate herald reads.
const MAX_CERT_BYTES: usize = 64 * 1024;

/// Why a webhook was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    /// Not signed by whom it claims, or too old: 401, nothing changes.
    #[error("the signature does not match: {0}")]
    Unauthorized(String),
    /// Not a payload of this relay: 400.
    #[error("{0}")]
    Malformed(String),
    /// The signing certificate could not be had (its host did not answer): 503, so
    /// the relay sends it again later.
    #[error("{0}")]
    Unavailable(String),
}

fn malformed(what: impl std::fmt::Display) -> WebhookError {
    WebhookError::Malformed(what.to_string())
}

/// Checks a Mailgun webhook body signed with `key` at `now` and reads what it reports:
/// `None` for events that are not bounces, complaints or unsubscribes.
pub fn mailgun_report(
    key: &[u8],
    body: &[u8],
    now: Timestamp,
) -> Result<Option<BounceReport>, WebhookError> {
    #[derive(Deserialize)]
    struct Signature {
        timestamp: String,
        token: String,
        signature: String,
    }
    #[derive(Deserialize)]
    struct Payload {
        signature: Signature,
        #[serde(rename = "event-data")]
        event: Value,
    }
    let payload: Payload = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("not a Mailgun webhook body: {e}")))?;
    let sig = &payload.signature;
    let given = hex_bytes(&sig.signature)
        .ok_or_else(|| WebhookError::Unauthorized("the signature is not hex".into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(sig.timestamp.as_bytes());
    mac.update(sig.token.as_bytes());
    mac.verify_slice(&given).map_err(|_| {
        WebhookError::Unauthorized("not signed with the Mailgun signing key".into())
    })?;
    let signed_at: i64 = sig
        .timestamp
        .trim()
        .parse()
        .map_err(|_| WebhookError::Unauthorized("the timestamp is not a number".into()))?;
    if (now.unix() - signed_at).abs() > MAILGUN_MAX_AGE_SECS {
        return Err(WebhookError::Unauthorized(format!(
            "the timestamp is {}s from now; more than {MAILGUN_MAX_AGE_SECS}s is refused",
            now.unix() - signed_at
        )));
    }
    let event = &payload.event;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let kind = match (
        event["event"].as_str().unwrap_or(""),
        event["severity"].as_str().unwrap_or(""),
    ) {
        ("failed", "permanent") => BounceKind::Hard,
        ("failed", _) => BounceKind::Soft,
        ("complained", _) => BounceKind::Complaint,
        ("unsubscribed", _) => BounceKind::Unsubscribe,
        _ => return Ok(None),
    };
    let id = text(&event["id"]).ok_or_else(|| malformed("the event has no id"))?;
    let status = &event["delivery-status"];
    let diagnostic = [&status["message"], &status["description"]]
        .into_iter()
        .filter_map(|v| v.as_str())
        .find(|s| !s.trim().is_empty())
        .map(|m| match status["code"].as_i64() {
            Some(code) => format!("{code} {m}"),
            None => m.to_string(),
        });
    let at = event["timestamp"]
        .as_f64()
        .map(|t| Timestamp::from_unix(t as i64))
        .unwrap_or(now);
    Ok(Some(BounceReport {
        source: BounceSource::Mailgun,
        source_id: id,
        kind,
        verp_token: text(&event["envelope"]["sender"]),
        original_message_id: text(&event["message"]["headers"]["message-id"]),
        recipient: text(&event["recipient"]),
        diagnostic,
        at,
    }))
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An SNS message as posted (the fields its signature covers and how to check it).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnsMessage {
    /// `Notification`, `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// SNS's id of the message: unique, the same when SNS delivers it again.
    pub message_id: String,
    /// The topic.
    pub topic_arn: String,
    /// The subject, when the publisher set one.
    #[serde(default)]
    pub subject: Option<String>,
    /// The payload (for SES, a JSON document).
    pub message: String,
    /// When SNS published it (ISO 8601).
    pub timestamp: String,
    /// `1` (RSA with SHA-1) or `2` (RSA with SHA-256).
    pub signature_version: String,
    /// Base64.
    pub signature: String,
    /// Where the certificate that signed it is.
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    /// What confirms a subscription (`SubscriptionConfirmation` only).
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    /// The confirmation token (`SubscriptionConfirmation` only).
    #[serde(default)]
    pub token: Option<String>,
}

impl SnsMessage {
    /// Parses a posted body.
    pub fn parse(body: &[u8]) -> Result<SnsMessage, WebhookError> {
        serde_json::from_slice(body).map_err(|e| malformed(format!("not an SNS message: {e}")))
    }

    /// The text its signature covers, as AWS documents it: `name\nvalue\n` for each
    /// field of its type, in that order.
    pub fn string_to_sign(&self) -> Result<String, WebhookError> {
        let mut out = String::new();
        let mut add = |name: &str, value: &str| {
            out.push_str(name);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        };
        match self.kind.as_str() {
            "Notification" => {
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                if let Some(subject) = &self.subject {
                    add("Subject", subject);
                }
                add("Timestamp", &self.timestamp);
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                let missing = || malformed("a subscription message without SubscribeURL or Token");
                add("Message", &self.message);
                add("MessageId", &self.message_id);
                add(
                    "SubscribeURL",
                    self.subscribe_url.as_deref().ok_or_else(missing)?,
                );
                add("Timestamp", &self.timestamp);
                add("Token", self.token.as_deref().ok_or_else(missing)?);
                add("TopicArn", &self.topic_arn);
                add("Type", &self.kind);
            }
            other => {
                return Err(malformed(format!(
                    "an SNS message of unknown type {other:?}"
                )));
            }
        }
        Ok(out)
    }

    /// Checks the signature with the certificate (DER) it names.
    pub fn verify(&self, cert: &[u8]) -> Result<(), WebhookError> {
        let refused = |why: &str| WebhookError::Unauthorized(why.to_string());
        let signature = STANDARD
            .decode(self.signature.trim())
            .map_err(|_| refused("the signature is not base64"))?;
        let text = self.string_to_sign()?;
        let der = CertificateDer::from(cert);
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|_| refused("the signing certificate cannot be read"))?;
        let algorithm: &dyn SignatureVerificationAlgorithm = match self.signature_version.as_str() {
            "1" => &RsaSha1,
            "2" => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            _ => return Err(refused("unknown SignatureVersion")),
        };
        cert.verify_signature(algorithm, text.as_bytes(), &signature)
            .map_err(|_| refused("the SNS signature does not match its certificate"))
    }
}

/// RSA PKCS#1 with SHA-1, which SNS signature version 1 uses (webpki offers no SHA-1
/// for certificate chains, rightly; here it checks one message against one key).
#[derive(Debug)]
struct RsaSha1;

impl SignatureVerificationAlgorithm for RsaSha1 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            public_key,
        )
        .verify(message, signature)
        .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        // sha1WithRSAEncryption, for completeness: only the key's id is compared here.
        AlgorithmIdentifier::from_slice(&[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00,
        ])
    }
}

/// Whether `url` is one herald may fetch for SNS: https on an allowed host (plain http
/// only to an allowed loopback address, which is how tests serve their certificate).
pub fn allowed_sns_url(config: &BouncesConfig, url: &str) -> Result<url::Url, WebhookError> {
    let refused = |why: String| WebhookError::Unauthorized(why);
    let url = url::Url::parse(url).map_err(|_| refused(format!("{url:?} is not a URL")))?;
    let host = url.host_str().unwrap_or("").to_string();
    if !config.allows_cert_host(&host) {
        return Err(refused(format!(
            "{host:?} is not in bounces.sns_cert_hosts"
        )));
    }
    let loopback = matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
        || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        other => Err(refused(format!("{other}:// is not https"))),
    }
}

/// Fetches SNS signing certificates from allowed hosts, keeping each (a topic signs
/// with one certificate for months), and confirms subscriptions.
pub struct SnsCertificates {
    /// Built on first use: a site that takes no SES webhooks never builds one.
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
    cache: Mutex<HashMap<String, Vec<u8>>>,
}

impl SnsCertificates {
    /// A fetcher with a short timeout and no redirects (a redirect could leave the
    /// allowed hosts).
    pub fn new() -> SnsCertificates {
        SnsCertificates {
            client: std::sync::OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self) -> Result<&reqwest::Client, WebhookError> {
        self.client
            .get_or_init(|| {
                crate::install_crypto_provider();
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .no_proxy()
                    .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| WebhookError::Unavailable(format!("cannot make an HTTPS client: {e}")))
    }

    /// The certificate (DER) at `url`, which must be allowed.
    pub async fn certificate(
        &self,
        config: &BouncesConfig,
        url: &str,
    ) -> Result<Vec<u8>, WebhookError> {
        let url = allowed_sns_url(config, url)?;
        if !url.path().ends_with(".pem") {
            return Err(WebhookError::Unauthorized(
                "SigningCertURL does not name a .pem file".into(),
            ));
        }
        if let Some(der) = self.cache.lock().expect("not poisoned").get(url.as_str()) {
            return Ok(der.clone());
        }
        let unavailable = |e: &dyn std::fmt::Display| {
            WebhookError::Unavailable(format!("cannot fetch the SNS certificate {url}: {e}"))
        };
        let response = self
            .client()?
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        if !response.status().is_success() {
            return Err(unavailable(&response.status()));
        }
        let bytes = response.bytes().await.map_err(|e| unavailable(&e))?;
        if bytes.len() > MAX_CERT_BYTES {
            return Err(WebhookError::Unauthorized(
                "the certificate is too large".into(),
            ));
        }
        let der = CertificateDer::from_pem_slice(&bytes)
            .map_err(|_| WebhookError::Unauthorized("the certificate is not PEM".into()))?
            .to_vec();
        self.cache
            .lock()
            .expect("not poisoned")
            .insert(url.to_string(), der.clone());
        Ok(der)
    }

    /// Confirms a subscription as AWS documents: a GET of its `SubscribeURL`, which
    /// must be on an allowed host too.
    pub async fn confirm(
        &self,
        config: &BouncesConfig,
        subscribe_url: &str,
    ) -> Result<(), WebhookError> {
        let url = allowed_sns_url(config, subscribe_url)?;
        let response = self.client()?.get(url.clone()).send().await.map_err(|e| {
            WebhookError::Unavailable(format!("cannot confirm the SNS subscription: {e}"))
        })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(WebhookError::Unavailable(format!(
                "SNS answered {} to the subscription confirmation",
                response.status()
            )))
        }
    }
}

impl Default for SnsCertificates {
    fn default() -> Self {
        SnsCertificates::new()
    }
}

/// What an SES notification (the `Message` of a signed SNS notification) reports:
/// `None` for other notifications (deliveries, sends).
pub fn ses_report(sns: &SnsMessage) -> Result<Option<BounceReport>, WebhookError> {
    let message: Value = serde_json::from_str(&sns.message)
        .map_err(|e| malformed(format!("the SES notification is not JSON: {e}")))?;
    let text = |v: &Value| v.as_str().map(str::to_string);
    let notification = message["notificationType"]
        .as_str()
        .or(message["eventType"].as_str())
        .unwrap_or("");
    let (kind, detail, recipients) = match notification {
        "Bounce" => {
            let bounce = &message["bounce"];
            let kind = match bounce["bounceType"].as_str() {
                Some("Permanent") => BounceKind::Hard,
                _ => BounceKind::Soft,
            };
            (kind, bounce, &bounce["bouncedRecipients"])
        }
        "Complaint" => {
            let complaint = &message["complaint"];
            (
                BounceKind::Complaint,
                complaint,
                &complaint["complainedRecipients"],
            )
        }
        _ => return Ok(None),
    };
    let mail = &message["mail"];
    let first = &recipients[0];
    let recipient = text(&first["emailAddress"]);
    let diagnostic = text(&first["diagnosticCode"])
        .or_else(|| text(&detail["complaintFeedbackType"]))
        .or_else(|| text(&detail["bounceSubType"]));
    let header = |name: &str| {
        mail["headers"].as_array().and_then(|headers| {
            headers.iter().find_map(|h| {
                h["name"]
                    .as_str()
                    .filter(|n| n.eq_ignore_ascii_case(name))
                    .and_then(|_| text(&h["value"]))
            })
        })
    };
    let at = text(&detail["timestamp"])
        .or_else(|| Some(sns.timestamp.clone()))
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| Timestamp::from_unix(t.timestamp()))
        .ok_or_else(|| malformed("the notification has no readable timestamp"))?;
    Ok(Some(BounceReport {
        source: BounceSource::Ses,
        source_id: sns.message_id.clone(),
        kind,
        verp_token: text(&mail["source"]),
        original_message_id: header("Message-ID")
            .or_else(|| text(&mail["commonHeaders"]["messageId"])),
        recipient,
        diagnostic,
        at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_mailgun(key: &[u8], timestamp: i64, event: Value) -> Vec<u8> {
        let token = "tok".repeat(10);
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{timestamp}{token}").as_bytes());
        let signature: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "signature": {"timestamp": timestamp.to_string(), "token": token, "signature": signature},
            "event-data": event,
        }))
        .unwrap()
    }

    #[test]
    fn mailgun_events_are_believed_only_when_signed_and_recent() {
        let event = serde_json::json!({
            "id": "ev-1", "event": "failed", "severity": "permanent",
            "recipient": "ada@example.org", "timestamp": 1000.5,
            "envelope": {"sender": "bounces+abc@b.example"},
            "message": {"headers": {"message-id": "x@y"}},
            "delivery-status": {"code": 550, "message": "No such user"},
        });
        let body = signed_mailgun(b"key", 1_000, event.clone());
        let report = mailgun_report(b"key", &body, Timestamp::from_unix(1_100))
            .unwrap()
            .unwrap();
        assert_eq!(report.kind, BounceKind::Hard);
        assert_eq!(report.source_id, "ev-1");
        assert_eq!(report.diagnostic.as_deref(), Some("550 No such user"));
        assert_eq!(report.verp_token.as_deref(), Some("bounces+abc@b.example"));
        assert!(matches!(
            mailgun_report(b"other", &body, Timestamp::from_unix(1_100)),
            Err(WebhookError::Unauthorized(_))
        ));
        assert!(matches!(
            mailgun_report(b"key", &body, Timestamp::from_unix(1_301)),
            Err(WebhookError::Unauthorized(_))
        ));
        let tampered = String::from_utf8(body.clone())
            .unwrap()
            .replace("ev-1", "ev-2");
        // The signature covers only timestamp and token (Mailgun's design): a changed
        // event id is still signed, and the replay check is the event id's.
        assert!(mailgun_report(b"key", tampered.as_bytes(), Timestamp::from_unix(1_100)).is_ok());
        let soft = signed_mailgun(
            b"key",
            1_000,
            serde_json::json!({"id": "ev-3", "event": "failed", "severity": "temporary"}),
        );
        assert_eq!(
            mailgun_report(b"key", &soft, Timestamp::from_unix(1_000))
                .unwrap()
                .unwrap()
                .kind,
            BounceKind::Soft
        );
        let delivered = signed_mailgun(
            b"key",
            1_000,
            serde_json::json!({"id": "e", "event": "delivered"}),
        );
        assert_eq!(
            mailgun_report(b"key", &delivered, Timestamp::from_unix(1_000)),
            Ok(None)
        );
        assert!(matches!(
            mailgun_report(b"key", b"{}", Timestamp::from_unix(1_000)),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn sns_urls_must_be_https_on_an_allowed_host() {
        let config = BouncesConfig {
            address: None,
            soft_limit: 3,
            sns_cert_hosts: vec!["sns.*.amazonaws.com".into(), "127.0.0.1".into()],
            mailgun_signing_key: None,
            imap: None,
            poll_interval: std::time::Duration::from_secs(60),
        };
        assert!(allowed_sns_url(&config, "https://sns.us-east-1.amazonaws.com/c.pem").is_ok());
        assert!(allowed_sns_url(&config, "http://sns.us-east-1.amazonaws.com/c.pem").is_err());
        assert!(allowed_sns_url(&config, "https://evil.example/c.pem").is_err());
        assert!(
            allowed_sns_url(
                &config,
                "https://sns.us-east-1.amazonaws.com.evil.example/c.pem"
            )
            .is_err()
        );
        assert!(allowed_sns_url(&config, "http://127.0.0.1:8080/c.pem").is_ok());
        assert!(allowed_sns_url(&config, "file:///etc/passwd").is_err());
    }
}
