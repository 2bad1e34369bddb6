//! Property test: any bytes, and especially near-feeds mutated from the corpus, give
//! either a parse error or articles that keep every promise ingest makes — never a
//! panic. Seeded, so a failure names the case that reproduces it.
//!
//! `HERALD_PROPERTY_CASES=100000 cargo test --release --test parse_property` runs longer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use herald::ingest::{FeedContext, parse_feed};

/// Fragments the mutator splices in: markup, entities, encodings, feed structure.
const TOKENS: &[&[u8]] = &[
    b"<",
    b">",
    b"&",
    b"&amp;",
    b"&lt;script&gt;",
    b"&#0;",
    b"&#xD800;",
    b"&#1114112;",
    b"&undefined;",
    b"<![CDATA[",
    b"]]>",
    b"<item>",
    b"</item>",
    b"<entry>",
    b"</entry>",
    b"<link>",
    b"</link>",
    b"<guid>",
    b"<title>",
    b"</title>",
    b" href=\"",
    b"javascript:",
    b"//",
    b"../",
    b"\0",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"\xc3",
    b"<?xml version=\"1.0\" encoding=\"UTF-16\"?>",
    b"<?xml version=\"1.0\" encoding=\"koi8-r\"?>",
    b"<?xml version=\"1.0\" encoding=\"bogus\"?>",
    b"<!DOCTYPE x [<!ENTITY e \"&e;\">]>",
    b"{",
    b"}",
    b"\"items\":[",
    b"\"url\":\"",
    b"<script>",
    b"<!--",
    b"-->",
    b"<category>breaking</category>",
    b"<pubDate>Mon, 99 Foo 99999 99:99:99 ZZZ</pubDate>",
    "\u{202e}\u{200b}é日本".as_bytes(),
];

fn corpus() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut files = Vec::new();
    for dir in ["corpus", "feeds"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e != "md") {
                files.push(std::fs::read(path).unwrap());
            }
        }
    }
    files.sort();
    files
}

fn mutate(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    if rng.u8(..) < 8 {
        // Plain noise now and then.
        return (0..rng.usize(..512)).map(|_| rng.u8(..)).collect();
    }
    let mut bytes = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(..=bytes.len());
        match rng.u8(..6) {
            0 if !bytes.is_empty() => {
                let i = rng.usize(..bytes.len());
                bytes[i] ^= 1 << rng.u8(..8);
            }
            1 => {
                let end = (at + rng.usize(..64)).min(bytes.len());
                bytes.drain(at..end);
            }
            2 => {
                let end = (at + rng.usize(..64)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.usize(..=bytes.len());
                bytes.splice(to..to, copy);
            }
            3 => bytes.truncate(at),
            4 => {
                let other = &corpus[rng.usize(..corpus.len())];
                let from = rng.usize(..=other.len());
                bytes.splice(at..at, other[from..].iter().copied().take(256));
            }
            _ => {
                let token = TOKENS[rng.usize(..TOKENS.len())];
                bytes.splice(at..at, token.iter().copied());
            }
        }
    }
    bytes
}

#[test]
fn feed_bytes_never_panic_and_items_keep_their_promises() {
    let cases: u64 = std::env::var("HERALD_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let seed: u64 = std::env::var("HERALD_PROPERTY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6865_7261_6c64);
    let corpus = corpus();
    assert!(corpus.len() >= 40);
    let context = FeedContext {
        base: Some(url::Url::parse("https://feeds.example/dir/feed.xml").unwrap()),
        charset: None,
        breaking_categories: vec!["breaking".into()],
        max_items: 20,
        now: 1_795_300_000,
        keep_internal_links: false,
    };
    let (mut parsed, mut items_seen) = (0, 0);
    for case in 0..cases {
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(case));
        let bytes = mutate(&mut rng, &corpus);
        let context = FeedContext {
            charset: rng
                .bool()
                .then(|| ["iso-8859-1", "utf-8", "nonsense", "utf-16"][rng.usize(..4)].into()),
            ..context.clone()
        };
        let result = catch_unwind(AssertUnwindSafe(|| parse_feed(&bytes, &context)));
        let Ok(result) = result else {
            let path = std::env::temp_dir().join(format!("herald-property-{case}.bin"));
            std::fs::write(&path, &bytes).unwrap();
            panic!(
                "parse_feed panicked on case {case} (seed {seed}); input saved to {}",
                path.display()
            );
        };
        let Ok(items) = result else { continue };
        parsed += 1;
        items_seen += items.len();
        assert!(items.len() <= context.max_items, "case {case}");
        let mut guids = std::collections::HashSet::new();
        for item in &items {
            let link = url::Url::parse(&item.link)
                .unwrap_or_else(|e| panic!("case {case}: bad link {:?}: {e}", item.link));
            assert!(
                matches!(link.scheme(), "http" | "https"),
                "case {case}: {link}"
            );
            assert!(!item.guid.is_empty(), "case {case}");
            assert!(
                guids.insert(item.guid.clone()),
                "case {case}: repeated guid"
            );
            assert!(!item.title.trim().is_empty(), "case {case}");
            for text in [&item.title, &item.summary, &item.category] {
                assert!(!text.chars().any(char::is_control), "case {case}: {text:?}");
            }
            assert!(item.title.chars().count() <= 301, "case {case}");
            assert!(item.summary.chars().count() <= 481, "case {case}");
            if let Some(t) = item.published_at {
                assert!(
                    (788_918_400..=context.now + 86_400).contains(&t),
                    "case {case}: {t}"
                );
            }
        }
    }
    // The mutator must keep producing feeds, or the test proves little.
    assert!(parsed * 10 > cases, "only {parsed} of {cases} cases parsed");
    assert!(items_seen > 0);
}
