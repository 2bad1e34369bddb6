//! DKIM: signatures made by herald verify with dkimpy against the public key, and
//! stop verifying when a List-* header is altered.

mod support;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use support::{Site, free_port, repo};

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn verify(message: &Path, record: &str) -> bool {
    let out = Command::new("python3")
        .arg(repo().join("tests/support/dkim_verify.py"))
        .arg(message)
        .arg(record)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        said == "pass" || said == "fail",
        "dkim_verify.py failed to run (pip install dkimpy pynacl): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    said == "pass"
}

/// Sends one digest through the file transport and returns the .eml path.
fn signed_message(site: &Site) -> std::path::PathBuf {
    site.run(&["ingest"]).ok();
    site.add_confirmed("ada@example.org", "riverton");
    let out = site
        .command(&["send", "--region", "riverton", "--yes"])
        .env("HERALD__MAIL__TRANSPORT", "file")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outbox = site.dir.path().join("var/outbox");
    let file = std::fs::read_dir(&outbox)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("DKIM-Signature:")
            || text.contains("\r\nDKIM-Signature:")
            || text.contains("\nDKIM-Signature:"),
        "{text}"
    );
    file
}

fn tamper(file: &Path, from: &str, to: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from:?} not in message");
    let altered = file.with_extension("altered.eml");
    std::fs::write(&altered, text.replacen(from, to, 1)).unwrap();
    altered
}

fn dkim_site(key: &Path) -> Site {
    // https, so list mail carries List-Unsubscribe-Post for the signature to cover.
    Site::new(free_port())
        .with_public_url("https://news.test.example")
        .with_extra(&format!(
            "[dkim]\ndomain = \"test.example\"\nselector = \"herald\"\nkey_file = \"{}\"\n",
            key.display()
        ))
}

#[test]
fn rsa_signature_verifies_and_breaks_when_list_headers_change() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim-rsa.pem");
    openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        key.to_str().unwrap(),
        "2048",
    ]);
    let public = openssl(&[
        "rsa",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    let record = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    );

    let site = dkim_site(&key);
    let message = signed_message(&site);
    assert!(verify(&message, &record), "the signature must verify");
    let text = std::fs::read_to_string(&message).unwrap();
    for header in [
        "list-unsubscribe",
        "list-unsubscribe-post",
        "list-id",
        "message-id",
        "from",
        "subject",
    ] {
        let signed = text.to_ascii_lowercase();
        let h_tag = signed.split("h=").nth(1).unwrap_or("");
        assert!(h_tag.contains(header), "{header} must be signed: {h_tag}");
    }
    let altered = tamper(&message, "/unsubscribe?token=", "/unsubscribe?token=9");
    assert!(
        !verify(&altered, &record),
        "an altered List-Unsubscribe must fail"
    );
    let altered = tamper(
        &message,
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "List-Unsubscribe-Post: List-Unsubscribe=Two-Click",
    );
    assert!(
        !verify(&altered, &record),
        "an altered List-Unsubscribe-Post must fail"
    );
}

#[test]
fn ed25519_signature_verifies_and_breaks_when_list_id_changes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dkim-ed25519.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        key.to_str().unwrap(),
    ]);
    let public = openssl(&[
        "pkey",
        "-in",
        key.to_str().unwrap(),
        "-pubout",
        "-outform",
        "DER",
    ]);
    let raw = &public[public.len() - 32..];
    let record = format!(
        "v=DKIM1; k=ed25519; p={}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    );

    let site = dkim_site(&key);
    let message = signed_message(&site);
    assert!(
        verify(&message, &record),
        "the Ed25519 signature must verify"
    );
    let altered = tamper(&message, "List-Id: \"Test News\"", "List-Id: \"Evil News\"");
    assert!(!verify(&altered, &record), "an altered List-Id must fail");
}

#[test]
fn a_dkim_domain_that_does_not_align_with_from_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    openssl(&[
        "genrsa",
        "-traditional",
        "-out",
        key.to_str().unwrap(),
        "2048",
    ]);
    let site = Site::new(free_port()).with_extra(&format!(
        "[dkim]\ndomain = \"other.example\"\nselector = \"herald\"\nkey_file = \"{}\"\n",
        key.display()
    ));
    let out = site.run(&["status"]).failed();
    assert!(out.stderr().contains("dkim.domain"), "{}", out.stderr());
    assert!(out.stderr().contains("does not align"), "{}", out.stderr());
}
