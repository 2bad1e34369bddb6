//! A small HTTP client for the reader pages: keeps cookies like a browser, reads the
//! CSRF token out of forms, and finds the links in emails.

use super::{parse_email, request};

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of a response header (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// A browser-like client for one daemon: a cookie jar and form posts.
pub struct WebClient {
    port: u16,
    cookies: Vec<(String, String)>,
    extra: Vec<(String, String)>,
}

impl WebClient {
    pub fn new(port: u16) -> WebClient {
        WebClient {
            port,
            cookies: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Sends this header with every request (e.g. a User-Agent or an Origin).
    pub fn with_header(mut self, name: &str, value: &str) -> WebClient {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// Forgets every cookie (a new browser).
    pub fn clear_cookies(&mut self) {
        self.cookies.clear();
    }

    fn send(&mut self, method: &str, path: &str, body: &str) -> Answer {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut headers: Vec<(&str, &str)> = self
            .extra
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if !cookie.is_empty() {
            headers.push(("Cookie", &cookie));
        }
        if method == "POST" {
            headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        }
        let (status, head, body) = request(self.port, method, path, &headers, body).unwrap();
        let answer = Answer { status, head, body };
        for line in answer.head.lines() {
            if let Some((k, v)) = line.split_once(':')
                && k.trim().eq_ignore_ascii_case("set-cookie")
                && let Some((name, value)) = v.trim().split(';').next().unwrap().split_once('=')
            {
                self.cookies.retain(|(n, _)| n != name);
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
        answer
    }

    pub fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, "")
    }

    pub fn post(&mut self, path: &str, body: &str) -> Answer {
        self.send("POST", path, body)
    }

    /// Opens the sign-up page and submits it: `regions` are (slug, cadence).
    pub fn sign_up(&mut self, email: &str, regions: &[(&str, &str)], timezone: &str) -> Answer {
        let page = self.get("/");
        assert_eq!(page.status, 200, "{}", page.body);
        let mut form = vec![
            ("csrf".to_string(), csrf_of(&page.body)),
            ("email".to_string(), email.to_string()),
            ("timezone".to_string(), timezone.to_string()),
            ("website".to_string(), String::new()),
        ];
        for (slug, cadence) in regions {
            form.push(("region".into(), slug.to_string()));
            form.push((format!("cadence-{slug}"), cadence.to_string()));
        }
        self.post("/subscribe", &encode(&form))
    }
}

/// `application/x-www-form-urlencoded` of the pairs.
pub fn encode(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The CSRF token of the first form on a page.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("the page has a CSRF field");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The first `http://…/{path}?token=…` link in the text, as a path with its query.
pub fn link_path(text: &str, path: &str) -> Option<String> {
    let needle = format!("/{path}?token=");
    let at = text.find(&needle)?;
    let rest = &text[at..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == '<' || c == '>')
        .unwrap_or(rest.len());
    Some(rest[..end].replace("&amp;", "&"))
}

/// The text part of a raw email.
pub fn text_part(raw: &str) -> String {
    parse_email(raw)
        .parts
        .into_iter()
        .find(|(ct, _)| ct.starts_with("text/plain"))
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The subject of a raw email.
pub fn subject(raw: &str) -> String {
    parse_email(raw)
        .header("Subject")
        .unwrap_or_default()
        .to_string()
}
