//! `[dkim]`: DKIM signing of every message, when all three keys are set.

use std::path::PathBuf;

use lettre::message::Mailbox;
use serde::Deserialize;

use super::setting::{Problems, Setting};

/// Built-in values: the first layer, under the file and the environment.
pub(super) const DEFAULTS: &str = r#"
[dkim]
domain = ""
selector = ""
key_file = ""
"#;

/// `[dkim]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    domain: Setting<String>,
    selector: Setting<String>,
    key_file: Setting<String>,
}

/// `[dkim]`: sign every message when set.
#[derive(Debug, Clone)]
pub struct DkimSettings {
    /// The signing domain (`d=`); must align with the From domain.
    pub domain: String,
    /// The selector (`s=`): the key is published at `selector._domainkey.domain`.
    pub selector: String,
    /// PEM file with the RSA or Ed25519 private key.
    pub key_file: PathBuf,
}

impl File {
    /// `Some(None)` when DKIM is off, `Some(Some(..))` when on, `None` with each
    /// problem recorded. The domain must align with `from`'s, when that could be read.
    pub(super) fn check(
        self,
        p: &mut Problems,
        from: Option<&Mailbox>,
        base: &std::path::Path,
    ) -> Option<Option<DkimSettings>> {
        let domain = p.take("dkim.domain", self.domain);
        let selector = p.take("dkim.selector", self.selector);
        let key_file = p.take("dkim.key_file", self.key_file);
        let (domain, selector, key_file) = (domain?, selector?, key_file?);
        let (domain, selector, key_file) = (domain.trim(), selector.trim(), key_file.trim());
        let set = [domain, selector, key_file]
            .iter()
            .filter(|field| !field.is_empty())
            .count();
        match set {
            0 => return Some(None),
            3 => {}
            _ => {
                p.push(
                    "dkim",
                    "set all of domain, selector and key_file, or none of them",
                );
                return None;
            }
        }
        let domain = domain.to_ascii_lowercase();
        let mut good = true;
        if let Some(from) = from {
            let from_domain = from.email.domain().to_ascii_lowercase();
            // Relaxed alignment (DMARC): the From domain is the DKIM domain or under it.
            if from_domain != domain && !from_domain.ends_with(&format!(".{domain}")) {
                p.push(
                    "dkim.domain",
                    format!(
                        "\"{domain}\" does not align with the From domain \"{from_domain}\"; receivers would ignore the signature"
                    ),
                );
                good = false;
            }
        }
        let key_file = super::resolve(base, key_file);
        if !key_file.is_file() {
            p.push(
                "dkim.key_file",
                format!("{} is not a readable file", key_file.display()),
            );
            good = false;
        }
        good.then(|| {
            Some(DkimSettings {
                domain,
                selector: selector.to_string(),
                key_file,
            })
        })
    }
}
