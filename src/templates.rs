//! Where each template's text comes from: the set built into the binary, or the
//! operator's override folder (`mail.templates_dir`).
//!
//! A template found in the override folder wins; one missing there falls back to the
//! built-in one, so an operator restyles only the files they copied out
//! (`herald templates export DIR`). An unreadable override file is an error, never a
//! silent fallback: the operator meant that file to be used.

use std::path::{Path, PathBuf};

/// Every file under `templates/` at build time, by its name relative to that folder
/// (`email/digest.html.j2`, `web/signup.html.j2`), with its text.
pub const BUILTIN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_templates.rs"));

/// One template's text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its name, e.g. `email/digest.html.j2`.
    pub name: &'static str,
    /// The text.
    pub text: String,
    /// The override file it was read from; `None` for the built-in one.
    pub file: Option<PathBuf>,
}

impl Source {
    /// Where the text came from, for error messages: the file, or "built in".
    pub fn origin(&self) -> String {
        match &self.file {
            Some(file) => format!("from {}", file.display()),
            None => "built in".into(),
        }
    }
}

/// Why a template could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TemplateSourceError {
    /// The override file exists but cannot be read.
    #[error("cannot read template {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// herald has no template of that name (a programming error, caught by tests).
    #[error("herald has no built-in template {0}")]
    Unknown(String),
}

/// The built-in text of `name`, if there is one.
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
}

/// The text of `name`: from `override_dir` when the file is there, else built in.
pub fn load(
    override_dir: Option<&Path>,
    name: &'static str,
) -> Result<Source, TemplateSourceError> {
    if let Some(dir) = override_dir {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return Ok(Source {
                    name,
                    text,
                    file: Some(path),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(TemplateSourceError::Read { path, source }),
        }
    }
    let text = builtin(name).ok_or_else(|| TemplateSourceError::Unknown(name.into()))?;
    Ok(Source {
        name,
        text: text.to_string(),
        file: None,
    })
}

/// Writes every built-in template under `dir` (made if missing), refusing to replace
/// a file that is already there. Returns the files written.
pub fn export(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    for (name, _) in BUILTIN {
        let path = dir.join(name);
        if path.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists; export into an empty folder, or move it away first",
                    path.display()
                ),
            ));
        }
    }
    let mut written = Vec::new();
    for (name, text) in BUILTIN {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_set_is_the_templates_folder() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        assert!(BUILTIN.len() >= 19, "{}", BUILTIN.len());
        for (name, text) in BUILTIN {
            assert_eq!(std::fs::read_to_string(root.join(name)).unwrap(), *text);
        }
        assert!(builtin("email/digest.html.j2").is_some());
        assert!(builtin("web/signup.html.j2").is_some());
    }

    #[test]
    fn an_override_wins_and_a_missing_one_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("email")).unwrap();
        std::fs::write(dir.path().join("email/digest.txt.j2"), "mine").unwrap();
        let mine = load(Some(dir.path()), "email/digest.txt.j2").unwrap();
        assert_eq!(mine.text, "mine");
        assert!(mine.origin().contains("email/digest.txt.j2"));
        let theirs = load(Some(dir.path()), "email/digest.html.j2").unwrap();
        assert_eq!(theirs.text, builtin("email/digest.html.j2").unwrap());
        assert_eq!(theirs.origin(), "built in");
        assert!(load(None, "email/nothing.j2").is_err());
    }

    #[test]
    fn export_writes_the_set_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let written = export(dir.path()).unwrap();
        assert_eq!(written.len(), BUILTIN.len());
        for (name, text) in BUILTIN {
            let loaded = load(Some(dir.path()), name).unwrap();
            assert_eq!(loaded.text, *text);
            assert!(loaded.file.is_some());
        }
        let err = export(dir.path()).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
    }
}
