//! Composing digests and sign-up emails: headers, parts, escaping, links and templates.

use super::*;
use crate::config::Config;

/// The composer `config` asks for, with the templates under `dir`.
pub(in crate::compose) fn composer_for(
    config: &Config,
    dir: &Path,
) -> Result<Composer, ComposeError> {
    Composer::new(
        &config.mail,
        &config.http.public_url,
        config.signup.confirm_link_lifetime,
        config.dkim.as_ref(),
        Some(dir),
        Signer::new(b"k"),
    )
}

fn config() -> Config {
    Config::from_toml(
        Path::new("config/herald.toml"),
        r#"
        [http]
        public_url = "https://news.example.org"
        [mail]
        from = "Demo News <news@demo.example>"
        postal_address = "1 Main St, Riverton"
        [[regions]]
        slug = "town"
        name = "Town"
        "#,
        std::iter::empty(),
    )
    .unwrap()
}

fn templates_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates")
}

fn article(region: &str, title: &str) -> DeliveryArticle {
    DeliveryArticle {
        article_id: ArticleId::new(1),
        region_slug: region.parse().unwrap(),
        region_name: region.to_uppercase(),
        title: title.into(),
        link: "https://news.example.org/a?x=1&y=2".into(),
        summary: "Summary".into(),
        category: "Schools".into(),
        published_at: Some(Timestamp::from_unix(1_795_248_000)),
    }
}

#[test]
fn an_http_public_url_gets_no_one_click_header() {
    let config = Config::from_toml(
        Path::new("config/herald.toml"),
        r#"
        [http]
        public_url = "http://news.example.org"
        [mail]
        from = "Demo News <news@demo.example>"
        postal_address = "1 Main St, Riverton"
        [[regions]]
        slug = "town"
        name = "Town"
        "#,
        std::iter::empty(),
    )
    .unwrap();
    let composer = composer_for(&config, &templates_dir()).unwrap();
    assert!(!composer.one_click());
    let email = Email::parse("reader@example.org").unwrap();
    let articles = vec![article("town", "Story")];
    let req = DigestRequest {
        subscriber_id: SubscriberId::new(9),
        email: &email,
        timezone: Timezone::UTC,
        cadence: Some(Cadence::Daily),
        message_id: "0123456789abcdef0123456789abcdef",
        articles: &articles,
        more: &[],
        sponsor: None,
        now: Timestamp::from_unix(1_795_300_000),
    };
    // Three readers of one group: full render, then the group template, then a
    // splice of it; none may carry the header.
    for _ in 0..3 {
        let message = String::from_utf8(composer.digest(&req).unwrap().bytes).unwrap();
        assert!(
            message.contains("List-Unsubscribe: <http://news.example.org/unsubscribe?token="),
            "{message}"
        );
        assert!(!message.contains("List-Unsubscribe-Post"), "{message}");
    }
    let welcome = composer
        .signup_email(&SignupRequest {
            kind: DeliveryKind::Welcome,
            subscriber_id: SubscriberId::new(9),
            email: &email,
            regions: &[],
            timezone: Timezone::UTC,
            message_id: "0123456789abcdef0123456789abcdef",
            now: Timestamp::from_unix(1_795_300_000),
        })
        .unwrap();
    let welcome = String::from_utf8(welcome.bytes).unwrap();
    assert!(welcome.contains("List-Unsubscribe: <http://"), "{welcome}");
    assert!(!welcome.contains("List-Unsubscribe-Post"), "{welcome}");
}

#[test]
fn digest_has_headers_parts_and_escaped_feed_text() {
    let composer = composer_for(&config(), &templates_dir()).unwrap();
    let email = Email::parse("reader@example.org").unwrap();
    let articles = vec![
        article("state", "<script>alert('x')</script> Budget"),
        article("town", "Fair"),
    ];
    let composed = composer
        .digest(&DigestRequest {
            subscriber_id: SubscriberId::new(9),
            email: &email,
            timezone: "Europe/Berlin".parse().unwrap(),
            cadence: Some(Cadence::Daily),
            message_id: "0123456789abcdef0123456789abcdef",
            articles: &articles,
            more: &[],
            sponsor: None,
            now: Timestamp::from_unix(1_795_248_000),
        })
        .unwrap();
    let text = String::from_utf8(composed.bytes.clone()).unwrap();
    assert!(
        text.contains("Message-ID: <01234567-89ab-cdef-0123-456789abcdef@demo.example>"),
        "{text}"
    );
    let unsubscribe = link_token(Purpose::Unsubscribe, 9);
    assert!(text.contains(&format!(
        "List-Unsubscribe: <https://news.example.org/unsubscribe?token={unsubscribe}>"
    )));
    assert!(text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    assert!(text.contains("List-Id: "));
    assert!(text.contains("multipart/alternative"));
    let plain_at = text.find("Content-Type: text/plain").unwrap();
    let html_at = text.find("Content-Type: text/html").unwrap();
    assert!(plain_at < html_at, "text/plain must come first");
    let request_again = DigestRequest {
        subscriber_id: SubscriberId::new(9),
        email: &email,
        timezone: "Europe/Berlin".parse().unwrap(),
        cadence: Some(Cadence::Daily),
        message_id: "0123456789abcdef0123456789abcdef",
        articles: &articles,
        more: &[],
        sponsor: None,
        now: Timestamp::from_unix(1_795_248_000),
    };
    let (plain, html) = composer
        .render_digest(&composer.digest_context(&request_again))
        .unwrap();
    assert!(
        !html.contains("<script>"),
        "feed markup must not reach the HTML part"
    );
    assert!(
        html.contains("&lt;script&gt;"),
        "the title is shown, escaped"
    );
    assert!(
        plain.contains("<script>alert"),
        "text/plain carries the title as text"
    );
    assert!(html.contains("1 Main St") && plain.contains("1 Main St"));
    assert!(html.contains("nsubscribe") && plain.contains("/unsubscribe?token="));
    assert_eq!(composed.envelope.to()[0].to_string(), "reader@example.org");
}

/// The token of reader `id`'s links in the emails these tests compose (at 1_795_248_000).
fn link_token(purpose: Purpose, id: i64) -> String {
    Signer::new(b"k").sign(purpose, id, 1_795_248_000 + LINK_LIFETIME_SECS)
}

fn signup_email(kind: DeliveryKind) -> (String, Parts) {
    let composer = composer_for(&config(), &templates_dir()).unwrap();
    let email = Email::parse("reader@example.org").unwrap();
    let regions = [
        crate::domain::ReaderRegion {
            slug: "town".parse().unwrap(),
            name: "Town <&> Country".into(),
            cadence: Cadence::Daily,
        },
        crate::domain::ReaderRegion {
            slug: "state".parse().unwrap(),
            name: "State".into(),
            cadence: Cadence::Alert,
        },
    ];
    let req = SignupRequest {
        kind,
        subscriber_id: SubscriberId::new(12),
        email: &email,
        regions: &regions,
        timezone: "Europe/Berlin".parse().unwrap(),
        message_id: "0123456789abcdef0123456789abcdef",
        now: Timestamp::from_unix(1_795_248_000),
    };
    let composed = composer.signup_email(&req).unwrap();
    let parts = composer
        .render_signup(kind, &composer.signup_context(&req))
        .unwrap();
    (String::from_utf8(composed.bytes).unwrap(), parts)
}

type Parts = (String, String);

#[test]
fn confirmation_carries_a_signed_confirm_link_and_no_list_headers() {
    let (message, (plain, html)) = signup_email(DeliveryKind::Confirmation);
    assert!(
        message.contains("Subject: Confirm your subscription to Demo News"),
        "{message}"
    );
    assert!(!message.contains("List-Unsubscribe"), "not list mail yet");
    let signer = Signer::new(b"k");
    let token = plain
        .split("https://news.example.org/confirm?token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert_eq!(
        signer.verify(Purpose::Confirm, token, 1_795_248_000 + 6 * 86_400),
        Ok(12)
    );
    assert!(
        signer
            .verify(Purpose::Confirm, token, 1_795_248_000 + 8 * 86_400)
            .is_err(),
        "the confirmation link lasts signup.confirm_link_lifetime (7 days)"
    );
    assert!(
        plain.contains("- Town <&> Country: Daily digest"),
        "{plain}"
    );
    assert!(plain.contains("- State: Breaking news alerts"));
    assert!(
        html.contains("Town &lt;&amp;&gt; Country"),
        "region names are escaped"
    );
    assert!(html.contains(&format!("/confirm?token={token}")));
    for part in [&plain, &html] {
        assert!(part.contains("1 Main St"));
        assert!(part.contains("ignore this email"));
    }
}

#[test]
fn welcome_is_list_mail_with_preferences_and_unsubscribe_links() {
    let (message, (plain, html)) = signup_email(DeliveryKind::Welcome);
    assert!(message.contains("Subject: You are subscribed to Demo News"));
    let unsubscribe = link_token(Purpose::Unsubscribe, 12);
    assert!(message.contains(&format!(
        "List-Unsubscribe: <https://news.example.org/unsubscribe?token={unsubscribe}>"
    )));
    assert!(message.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
    for part in [&plain, &html] {
        let preferences = link_token(Purpose::Preferences, 12);
        assert!(
            part.contains(&format!("/preferences?token={preferences}")),
            "{part}"
        );
        assert!(part.contains(&format!("/unsubscribe?token={unsubscribe}")));
        assert!(part.contains("Europe/Berlin"));
        assert!(part.contains("1 Main St"));
    }
}

#[test]
fn a_broken_template_is_an_error_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("email")).unwrap();
    for name in TEMPLATES {
        std::fs::copy(templates_dir().join(name), dir.path().join(name)).unwrap();
    }
    std::fs::write(dir.path().join("email/digest.txt.j2"), "ok {{ site_name }}").unwrap();
    std::fs::write(
        dir.path().join("email/digest.html.j2"),
        "{% for a in groups %}unclosed",
    )
    .unwrap();
    let err = composer_for(&config(), dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("email/digest.html.j2"), "{err}");
    assert!(err.contains("line 1"), "{err}");
    assert!(
        err.contains(
            &dir.path()
                .join("email/digest.html.j2")
                .display()
                .to_string()
        ),
        "{err}"
    );
    std::fs::write(
        dir.path().join("email/digest.html.j2"),
        "{{ no_such_variable }}",
    )
    .unwrap();
    let err = composer_for(&config(), dir.path())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("undefined"), "{err}");
}
