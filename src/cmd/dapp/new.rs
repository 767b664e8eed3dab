//! `utter dapp new NAME --lang sh|python|rust`: a working project, with
//! fixtures that pass, in a new directory.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use utter_node::Home;

use super::project::PROJECT_FILE;

/// The languages `dapp new` has templates for.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// busybox sh (a static busybox from this machine goes into the image)
    Sh,
    /// Python 3 (this machine's interpreter and standard library go into the image)
    Python,
    /// Rust, one static executable (needs cargo)
    Rust,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::Sh => "sh",
            Lang::Python => "python",
            Lang::Rust => "rust",
        }
    }

    /// (path in the project, template text) of its own files.
    fn files(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Lang::Sh => vec![
                (PROJECT_FILE, include_str!("templates/sh/utter-dapp.toml")),
                ("build.sh", include_str!("templates/sh/build.sh")),
                ("main.sh", include_str!("templates/sh/main.sh")),
            ],
            Lang::Python => vec![
                (
                    PROJECT_FILE,
                    include_str!("templates/python/utter-dapp.toml"),
                ),
                ("build.sh", include_str!("templates/python/build.sh")),
                ("main.py", include_str!("templates/python/main.py")),
            ],
            Lang::Rust => vec![
                (PROJECT_FILE, include_str!("templates/rust/utter-dapp.toml")),
                ("build.sh", include_str!("templates/rust/build.sh")),
                ("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
                ("src/main.rs", include_str!("templates/rust/main.rs")),
            ],
        }
    }
}

/// Files every project gets.
const COMMON: [(&str, &str); 8] = [
    ("README.md", include_str!("templates/common/README.md")),
    (".gitignore", include_str!("templates/common/gitignore")),
    (
        "fixtures/01-greet/txs.jsonl",
        include_str!("templates/common/01-greet.txs"),
    ),
    (
        "fixtures/01-greet/results.jsonl",
        include_str!("templates/common/01-greet.results"),
    ),
    ("fixtures/01-greet/after/guests", "Ada\nGrace\n"),
    ("fixtures/01-greet/after/greetings", "2\n"),
    (
        "fixtures/02-refuse/txs.jsonl",
        include_str!("templates/common/02-refuse.txs"),
    ),
    (
        "fixtures/02-refuse/results.jsonl",
        include_str!("templates/common/02-refuse.results"),
    ),
];

/// Arguments of `utter dapp new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// The dapp's name (a-z, 0-9, '.', '_', '-'); also the directory made
    name: String,
    /// The language of the project
    #[arg(long, value_enum, default_value = "sh")]
    lang: Lang,
    /// Where to make the project [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn write(dir: &Path, rel: &str, text: &str) -> Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `utter dapp new`.
pub fn new(args: NewArgs) -> Result<u8> {
    utter_formats::config::check_name("dapp", &args.name)?;
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists() && std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} exists and is not empty: pick another name or --dir",
            dir.display()
        );
    }
    let fill = |text: &str| {
        text.replace("{{name}}", &args.name)
            .replace("{{lang}}", args.lang.name())
    };
    for (rel, text) in args.lang.files().into_iter().chain(COMMON) {
        write(&dir, rel, &fill(text))?;
    }
    for who in ["author", "guest"] {
        Home::generate_key(&dir.join("fixtures/keys").join(who))?;
    }
    println!(
        "made {} ({} dapp {}); next:\n  cd {}\n  utter dapp test\n  utter dapp deploy {} .",
        dir.display(),
        args.lang.name(),
        args.name,
        dir.display(),
        args.name
    );
    Ok(0)
}
