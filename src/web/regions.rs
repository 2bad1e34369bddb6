//! The region picker of the sign-up and preferences pages, and the time zone list.
//!
//! A site with a handful of regions shows them all, grouped under their parent. A site
//! with tens of thousands of communities cannot: past `signup.search_threshold` the
//! pages offer a search answered by the server, as a plain GET form and, for scripts,
//! as JSON (`GET /regions?q=`).

use std::collections::HashMap;

use serde::Serialize;

use crate::config::Region;
use crate::domain::{Cadence, RegionSlug};

/// Most communities one search shows.
pub const SEARCH_LIMIT: usize = 20;

/// Most regions one reader may pick in one form.
pub const MAX_CHOSEN: usize = 50;

/// The configured regions, ready to list and search.
pub struct RegionIndex {
    entries: Vec<Entry>,
    by_slug: HashMap<RegionSlug, usize>,
    children: Vec<Vec<usize>>,
    search_threshold: usize,
}

struct Entry {
    slug: RegionSlug,
    name: String,
    folded: String,
    /// The parent's name, shown beside a search result ("Riverton, Across Cascadia").
    context: String,
    depth: usize,
}

/// One row of the picker: a checkbox and a cadence.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PickerRow {
    /// Region slug (the checkbox value).
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Where it is, for search results ("Across Cascadia"); empty for top-level regions.
    pub context: String,
    /// Nesting under its top-level region, for indentation (0 = top level).
    pub depth: usize,
    /// Whether the reader has it.
    pub checked: bool,
    /// The cadence chosen for it.
    pub cadence: String,
}

/// A top-level region with everything under it.
#[derive(Debug, Clone, Serialize)]
pub struct PickerGroup {
    /// The top-level region's name (the fieldset legend).
    pub name: String,
    /// The region itself first, then its communities.
    pub rows: Vec<PickerRow>,
}

/// A hidden field the search form carries, so a search keeps what was chosen.
#[derive(Debug, Clone, Serialize)]
pub struct Hidden {
    /// Field name.
    pub name: String,
    /// Field value.
    pub value: String,
}

/// What the picker templates are given.
#[derive(Debug, Clone, Serialize)]
pub struct Picker {
    /// Search mode (many regions) rather than the full grouped list.
    pub search: bool,
    /// List mode: every region, grouped under its top-level region.
    pub groups: Vec<PickerGroup>,
    /// Search mode: chosen regions first, then the search's results.
    pub rows: Vec<PickerRow>,
    /// The search text.
    pub query: String,
    /// Whether a search was made.
    pub searched: bool,
    /// How many results the search shows (chosen regions not counted).
    pub found: usize,
    /// Fields the search form carries (chosen regions and cadences, link token).
    pub hidden: Vec<Hidden>,
    /// Where the search form goes (`/` or `/preferences`).
    pub action: String,
}

/// A search result, as `GET /regions?q=` answers it.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// Slug.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// The parent's name, or empty.
    pub context: String,
}

impl RegionIndex {
    /// Indexes the configured regions (parents before children, as config keeps them).
    pub fn new(regions: &[Region], search_threshold: usize) -> RegionIndex {
        let by_slug: HashMap<RegionSlug, usize> = regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.slug.clone(), i))
            .collect();
        let parent_of = |i: usize| -> Option<usize> {
            regions[i]
                .parent
                .as_ref()
                .and_then(|p| by_slug.get(p).copied())
        };
        let mut children = vec![Vec::new(); regions.len()];
        let entries = (0..regions.len())
            .map(|i| {
                let mut at = i;
                let mut depth = 0;
                // Bounded, so that a parent cycle in the config cannot hang a page.
                while let Some(parent) = parent_of(at) {
                    if depth >= regions.len() {
                        break;
                    }
                    at = parent;
                    depth += 1;
                }
                if let Some(parent) = parent_of(i) {
                    children[parent].push(i);
                }
                Entry {
                    slug: regions[i].slug.clone(),
                    name: regions[i].name.clone(),
                    folded: regions[i].name.to_lowercase(),
                    context: parent_of(i)
                        .map(|p| regions[p].name.clone())
                        .unwrap_or_default(),
                    depth,
                }
            })
            .collect();
        RegionIndex {
            entries,
            by_slug,
            children,
            search_threshold,
        }
    }

    /// Whether the pages offer a search instead of the full list.
    pub fn is_search(&self) -> bool {
        self.entries.len() > self.search_threshold
    }

    /// Whether `slug` is a configured region.
    pub fn contains(&self, slug: &RegionSlug) -> bool {
        self.by_slug.contains_key(slug)
    }

    /// The display name of a region.
    pub fn name(&self, slug: &RegionSlug) -> Option<&str> {
        self.by_slug
            .get(slug)
            .map(|&i| self.entries[i].name.as_str())
    }

    /// Communities whose name matches `query`, best first: the whole name, then names
    /// that start with it, then names with a word that starts with it, then the rest.
    pub fn search(&self, query: &str, limit: usize) -> Vec<Found> {
        let query = query.trim().to_lowercase();
        if query.is_empty() {
            return Vec::new();
        }
        let mut hits: Vec<(u8, usize, &Entry)> = self
            .entries
            .iter()
            .filter_map(|e| {
                let rank = if e.folded == query {
                    0
                } else if e.folded.starts_with(&query) {
                    1
                } else if e
                    .folded
                    .split(|c: char| !c.is_alphanumeric())
                    .any(|w| w.starts_with(&query))
                {
                    2
                } else if e.folded.contains(&query) {
                    3
                } else {
                    return None;
                };
                Some((rank, e.name.len(), e))
            })
            .collect();
        hits.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
        hits.into_iter()
            .take(limit)
            .map(|(_, _, e)| Found {
                slug: e.slug.to_string(),
                name: e.name.clone(),
                context: e.context.clone(),
            })
            .collect()
    }

    /// The picker for a page: every region grouped (few regions), or the chosen ones
    /// plus the results of `query` (many). `chosen` are checked; `cadences` holds
    /// cadences given for regions not chosen (a form sent back with an error).
    pub fn picker(
        &self,
        chosen: &[(RegionSlug, Cadence)],
        cadences: &HashMap<RegionSlug, Cadence>,
        query: &str,
        action: &str,
        carry: Vec<Hidden>,
    ) -> Picker {
        let row = |i: usize| {
            let e = &self.entries[i];
            let mine = chosen.iter().find(|(s, _)| s == &e.slug);
            let cadence = mine
                .map(|(_, c)| *c)
                .or_else(|| cadences.get(&e.slug).copied())
                .unwrap_or(Cadence::Daily);
            PickerRow {
                slug: e.slug.to_string(),
                name: e.name.clone(),
                context: e.context.clone(),
                depth: e.depth,
                checked: mine.is_some(),
                cadence: cadence.as_str().to_string(),
            }
        };
        if !self.is_search() {
            let mut groups: Vec<(usize, PickerGroup)> = Vec::new();
            for (i, e) in self.entries.iter().enumerate() {
                if e.depth == 0 {
                    groups.push((
                        i,
                        PickerGroup {
                            name: e.name.clone(),
                            rows: Vec::new(),
                        },
                    ));
                }
            }
            // Depth-first under each top-level region, so a county's towns follow it.
            for (root, group) in groups.iter_mut() {
                self.walk(*root, &mut |i| group.rows.push(row(i)));
            }
            return Picker {
                search: false,
                groups: groups.into_iter().map(|(_, g)| g).collect(),
                rows: Vec::new(),
                query: String::new(),
                searched: false,
                found: 0,
                hidden: carry,
                action: action.to_string(),
            };
        }
        let mut rows: Vec<PickerRow> = chosen
            .iter()
            .filter_map(|(slug, _)| self.by_slug.get(slug).map(|&i| row(i)))
            .collect();
        let query = query.trim().chars().take(100).collect::<String>();
        let mut found = 0;
        for hit in self.search(&query, SEARCH_LIMIT) {
            if rows.iter().any(|r| r.slug == hit.slug) {
                continue;
            }
            if let Ok(slug) = hit.slug.parse::<RegionSlug>()
                && let Some(&i) = self.by_slug.get(&slug)
            {
                rows.push(row(i));
                found += 1;
            }
        }
        let mut hidden = carry;
        for (slug, cadence) in chosen {
            hidden.push(Hidden {
                name: "region".into(),
                value: slug.to_string(),
            });
            hidden.push(Hidden {
                name: format!("cadence-{slug}"),
                value: cadence.as_str().into(),
            });
        }
        Picker {
            search: true,
            groups: Vec::new(),
            rows,
            searched: !query.is_empty(),
            query,
            found,
            hidden,
            action: action.to_string(),
        }
    }

    fn walk(&self, at: usize, visit: &mut impl FnMut(usize)) {
        visit(at);
        for &child in &self.children[at] {
            self.walk(child, visit);
        }
    }
}

/// One `<optgroup>` of the time zone list.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneGroup {
    /// "America", "Europe"…
    pub label: String,
    /// IANA names in it.
    pub zones: Vec<Zone>,
}

/// One time zone option.
#[derive(Debug, Clone, Serialize)]
pub struct Zone {
    /// IANA name (the value).
    pub name: String,
    /// Readable: "America / Los Angeles" (a closed list shows no group name).
    pub label: String,
}

/// The IANA zones readers pick from: canonical `Area/Place` names and UTC, grouped by
/// area. Legacy aliases (`US/Pacific`, `Etc/GMT+5`) are left out of the list, though
/// the server accepts them.
pub fn zone_groups() -> Vec<ZoneGroup> {
    const AREAS: [&str; 9] = [
        "Africa",
        "America",
        "Antarctica",
        "Asia",
        "Atlantic",
        "Australia",
        "Europe",
        "Indian",
        "Pacific",
    ];
    let mut groups: Vec<ZoneGroup> = AREAS
        .iter()
        .map(|a| ZoneGroup {
            label: a.to_string(),
            zones: Vec::new(),
        })
        .collect();
    for tz in chrono_tz::TZ_VARIANTS {
        let name = tz.name();
        if let Some((area, _)) = name.split_once('/')
            && let Some(i) = AREAS.iter().position(|a| *a == area)
        {
            groups[i].zones.push(Zone {
                name: name.to_string(),
                label: name.replace('_', " ").replace('/', " / "),
            });
        }
    }
    for group in &mut groups {
        group.zones.sort_by(|a, b| a.name.cmp(&b.name));
    }
    groups.push(ZoneGroup {
        label: "Other".into(),
        zones: vec![Zone {
            name: "UTC".into(),
            label: "UTC".into(),
        }],
    });
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn regions(extra: usize) -> Vec<Region> {
        let mut toml = String::from(
            r#"
            [mail]
            from = "Demo <news@demo.example>"
            postal_address = "1 Main St"
            [[regions]]
            slug = "state"
            name = "Across the State"
            [[regions]]
            slug = "county"
            name = "Lake County"
            parent = "state"
            [[regions]]
            slug = "riverton"
            name = "Riverton"
            parent = "county"
            [[regions]]
            slug = "other"
            name = "Other State"
            [[regions]]
            slug = "oakdale"
            name = "Oakdale"
            parent = "state"
            "#,
        );
        for i in 0..extra {
            toml.push_str(&format!(
                "[[regions]]\nslug = \"town-{i}\"\nname = \"Town {i}\"\nparent = \"other\"\n"
            ));
        }
        crate::config::Config::from_toml(Path::new("x.toml"), &toml, std::iter::empty())
            .unwrap()
            .regions
            .to_vec()
    }

    #[test]
    fn few_regions_are_listed_under_their_top_level_region() {
        let index = RegionIndex::new(&regions(0), 36);
        assert!(!index.is_search());
        let chosen = vec![("riverton".parse().unwrap(), Cadence::Weekly)];
        let picker = index.picker(&chosen, &HashMap::new(), "", "/", Vec::new());
        let names: Vec<Vec<(String, usize, bool)>> = picker
            .groups
            .iter()
            .map(|g| {
                g.rows
                    .iter()
                    .map(|r| (r.name.clone(), r.depth, r.checked))
                    .collect()
            })
            .collect();
        assert_eq!(
            names,
            vec![
                vec![
                    ("Across the State".into(), 0, false),
                    ("Lake County".into(), 1, false),
                    ("Riverton".into(), 2, true),
                    ("Oakdale".into(), 1, false),
                ],
                vec![("Other State".into(), 0, false)],
            ]
        );
        assert_eq!(picker.groups[0].rows[2].cadence, "weekly");
        assert_eq!(picker.groups[0].rows[0].cadence, "daily");
    }

    #[test]
    fn many_regions_are_searched_best_match_first() {
        let index = RegionIndex::new(&regions(60), 36);
        assert!(index.is_search());
        let found: Vec<String> = index
            .search("town 1", 5)
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(
            found,
            ["Town 1", "Town 10", "Town 11", "Town 12", "Town 13"]
        );
        let found = index.search("COUNTY", 5);
        assert_eq!(found[0].name, "Lake County");
        assert_eq!(found[0].context, "Across the State");
        assert!(index.search("  ", 5).is_empty());
        assert!(index.search("zzz", 5).is_empty());

        // A search keeps what was chosen, first and checked, and carries it in the
        // search form's hidden fields.
        let chosen = vec![("riverton".parse().unwrap(), Cadence::Alert)];
        let picker = index.picker(&chosen, &HashMap::new(), "oak", "/", Vec::new());
        let rows: Vec<(&str, bool)> = picker
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.checked))
            .collect();
        assert_eq!(rows, [("Riverton", true), ("Oakdale", false)]);
        assert_eq!(picker.found, 1);
        assert!(picker.searched);
        let hidden: Vec<(&str, &str)> = picker
            .hidden
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(
            hidden,
            [("region", "riverton"), ("cadence-riverton", "alert")]
        );
    }

    #[test]
    fn zone_list_has_canonical_names_only() {
        let groups = zone_groups();
        let all: Vec<&str> = groups
            .iter()
            .flat_map(|g| g.zones.iter().map(|z| z.name.as_str()))
            .collect();
        assert!(all.contains(&"America/Los_Angeles"));
        assert!(all.contains(&"Australia/Lord_Howe"));
        assert!(all.contains(&"UTC"));
        assert!(!all.contains(&"US/Pacific"));
        assert!(all.len() > 300, "{}", all.len());
    }
}
