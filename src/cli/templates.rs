//! `herald templates export DIR`: writes the built-in templates, to restyle them.
//!
//! Point `mail.templates_dir` at DIR afterwards; herald uses each file found there and
//! the built-in template for any file removed, so keep only the files you change.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// `herald templates …`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write the built-in email and page templates under DIR (a new or empty folder).
    Export {
        /// The folder to write into; `email/` and `web/` are made under it.
        dir: PathBuf,
    },
}

/// Runs the command; it needs no configuration or database.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Export { dir } => {
            let written = crate::templates::export(&dir)
                .with_context(|| format!("cannot export the templates to {}", dir.display()))?;
            for path in &written {
                println!("{}", path.display());
            }
            println!(
                "wrote {} templates; set mail.templates_dir = \"{}\" to use your edits \
                 (a file you delete falls back to the built-in one)",
                written.len(),
                std::path::absolute(&dir).unwrap_or(dir).display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
