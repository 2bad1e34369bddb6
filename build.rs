//! Rebuilds when a migration or a template is added or changed, and lists the
//! templates to build in.
//!
//! `sqlx::migrate!` embeds the migrations at compile time, and cargo does not otherwise
//! watch that folder. The templates under `templates/` are built into the binary
//! (`src/templates.rs` includes the list written here), so an installed herald renders
//! from any directory; listing the folder here means a new template needs no code.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=templates");
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("templates");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut out = String::from("&[\n");
    for (name, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    out.push(']');
    let dest =
        PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("builtin_templates.rs");
    std::fs::write(dest, out).expect("write the template list");
}

/// Every file under `dir`, as (name relative to `root` with `/`, full path).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).expect("read the templates folder");
    for entry in entries {
        let path = entry.expect("read the templates folder").path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(root, &path, files);
        } else {
            let name = path
                .strip_prefix(root)
                .expect("under the templates folder")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            files.push((name, path));
        }
    }
}
