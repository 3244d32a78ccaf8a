//! `data-exporter plugin new NAME [--lang rust|python|js]`: write a ready-to-build plugin
//! project from the templates embedded in this binary (`host/templates/`), with the contract's
//! WIT (`wit/0.3`) for Python and JavaScript.

use anyhow::Context;
use std::path::{Component, Path, PathBuf};

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with the SDK (`sdk/`).
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
}

/// The contract's WIT packages, as `wit/0.3/deps` holds them (what the SDK builds against).
const WIT_DEPS: &[(&str, &str)] = &[
    ("wit/deps/exporter-0.1.0/exporter.wit", include_str!("../../../wit/0.3/deps/exporter-0.1.0/exporter.wit")),
    ("wit/deps/exporter-0.2.0/exporter.wit", include_str!("../../../wit/0.3/deps/exporter-0.2.0/exporter.wit")),
];

/// Each language's files: path in the project, template text.
fn templates(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("../../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../../templates/rust/src/lib.rs")),
            ("README.md", include_str!("../../templates/rust/README.md")),
            (".gitignore", include_str!("../../templates/rust/gitignore")),
        ],
        Lang::Python => {
            let mut files = vec![
                ("app.py", include_str!("../../templates/python/app.py")),
                ("consumer.py", include_str!("../../templates/python/consumer.py")),
                ("requirements.txt", include_str!("../../templates/python/requirements.txt")),
                ("README.md", include_str!("../../templates/python/README.md")),
                (".gitignore", include_str!("../../templates/python/gitignore")),
                ("wit/world.wit", include_str!("../../templates/python/world.wit")),
            ];
            files.extend_from_slice(WIT_DEPS);
            files
        }
        Lang::Js => {
            let mut files = vec![
                ("plugin.js", include_str!("../../templates/js/plugin.js")),
                ("package.json", include_str!("../../templates/js/package.json")),
                ("README.md", include_str!("../../templates/js/README.md")),
                (".gitignore", include_str!("../../templates/js/gitignore")),
                ("wit/world.wit", include_str!("../../templates/js/world.wit")),
            ];
            files.extend_from_slice(WIT_DEPS);
            files
        }
    }
}

/// A plugin name is a directory, a cargo package, a WIT package and a config key: lower-case
/// letters, digits and single hyphens, starting with a letter, at most 64 characters. This
/// also refuses every path trick (`..`, `/`, absolute paths).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok && RESERVED.contains(&name) {
        return Err(format!(
            "{name:?} is a name Rust or Cargo keeps for itself (a keyword, a standard crate, or `test`): pick another, \
             e.g. `{name}-sink`"
        ));
    }
    if ok {
        return Ok(());
    }
    Err(format!(
        "{name:?} is not a plugin name: use lower-case letters, digits and single hyphens, starting with a letter \
         (at most 64), e.g. `my-webhook`; it names the new directory (created in the current one, or in --dir), \
         the package and the config key"
    ))
}

/// Names no crate may take: Rust keywords, the standard crates, and what Cargo refuses.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "yield",
    "abstract",
    "become",
    "do",
    "final",
    "macro",
    "override",
    "priv",
    "typeof",
    "unsized",
    "virtual",
    "alloc",
    "core",
    "std",
    "proc-macro",
    "test",
    "build",
];

/// `{{name}}`-style placeholders replaced.
fn fill(text: &str, vars: &[(&str, String)]) -> String {
    vars.iter().fold(text.to_string(), |t, (k, v)| t.replace(&format!("{{{{{k}}}}}"), v))
}

/// `name` as a Rust type name: `my-webhook` -> `MyWebhookDestination` (the suffix keeps it
/// clear of the SDK's and the prelude's names: `report`, `string`, `result`...).
fn type_name(name: &str) -> String {
    let camel: String = name
        .split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect();
    camel + "Destination"
}

/// The SDK this binary was built beside, when it is still there.
pub fn default_sdk() -> Option<PathBuf> {
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    sdk.join("Cargo.toml").is_file().then(|| sdk.canonicalize().ok()).flatten()
}

/// `to` relative to the directory `from` (both absolute), e.g. `../../data-exporter/sdk`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (f, t): (Vec<Component>, Vec<Component>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

/// What `plugin new` wrote.
#[derive(Debug)]
pub struct Created {
    /// The project directory.
    pub dir: PathBuf,
    /// The files, relative to it.
    pub files: Vec<String>,
    /// How to build it.
    pub build: String,
    /// Something the author must do first, when any (e.g. point at the SDK).
    pub note: Option<String>,
}

/// Write the project `name` in `parent` (created if missing). `sdk`: the SDK's directory for a
/// Rust plugin (default: the one this binary was built from, else a placeholder to edit).
pub fn create(name: &str, lang: Lang, parent: &Path, sdk: Option<&Path>) -> anyhow::Result<Created> {
    check_name(name).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let parent = parent.canonicalize().with_context(|| format!("finding {}", parent.display()))?;
    let dir = parent.join(name);
    let crate_name = name.replace('-', "_");
    let mut note = None;
    // Only a Rust project depends on the SDK; it is checked before anything is created.
    let sdk = if lang == Lang::Rust { sdk.map(Path::to_path_buf).or_else(default_sdk) } else { None };
    let sdk_dependency = match sdk {
        Some(sdk) => {
            let sdk = sdk.canonicalize().with_context(|| format!("finding the SDK at {}", sdk.display()))?;
            anyhow::ensure!(
                sdk.join("Cargo.toml").is_file(),
                "{} is not the SDK (no Cargo.toml): pass --sdk with the data-exporter repository's sdk/ directory",
                sdk.display()
            );
            format!("data-exporter-sdk = {{ path = {:?} }}", relative(&dir, &sdk).display().to_string())
        }
        None => {
            if lang == Lang::Rust {
                note = Some(
                    "edit Cargo.toml: point `data-exporter-sdk` at the sdk/ directory of a data-exporter checkout \
                     (or pass --sdk DIR next time)"
                        .to_string(),
                );
            }
            "# The SDK: the sdk/ directory of a data-exporter checkout. Edit this path.\n\
             data-exporter-sdk = { path = \"PATH/TO/data-exporter/sdk\" }"
                .to_string()
        }
    };
    let sdk_note = match &note {
        None => "the data-exporter checkout this project was created from".to_string(),
        Some(_) => "edit its path to point at your data-exporter checkout's `sdk/`".to_string(),
    };
    let vars = [
        ("name", name.to_string()),
        ("crate", crate_name.clone()),
        ("config_key", name.to_string()),
        ("type_name", type_name(name)),
        ("sdk_dependency", sdk_dependency),
        ("sdk_note", sdk_note),
    ];
    // create_dir (not _all) fails on an existing directory or file: nothing is overwritten.
    std::fs::create_dir(&dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow::anyhow!("{} already exists: pick another name, or remove it first", dir.display())
        }
        _ => anyhow::anyhow!("creating {}: {e}", dir.display()),
    })?;
    let mut files = Vec::new();
    let written = (|| -> anyhow::Result<()> {
        for (path, text) in templates(lang) {
            let target = dir.join(path);
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p)?;
            }
            std::fs::write(&target, fill(text, &vars)).with_context(|| format!("writing {}", target.display()))?;
            files.push(path.to_string());
        }
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let build = match lang {
        Lang::Rust => format!(
            "cd {} && cargo build --release --target wasm32-wasip2   # -> target/wasm32-wasip2/release/{crate_name}.wasm",
            dir.display()
        ),
        Lang::Python => format!(
            "cd {} && python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && \
             .venv/bin/componentize-py --wit-path wit --world plugin componentize app --python-path . --output {name}.wasm",
            dir.display()
        ),
        Lang::Js => format!("cd {} && npm install && npm run build   # -> {name}.wasm", dir.display()),
    };
    Ok(Created { dir, files, build, note })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_directory() {
        for bad in ["..", "../x", "/tmp/x", "a/b", "", "-x", "x-", "a--b", "Caps", "x_y", "a.b", "ünï"] {
            assert!(check_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["x", "my-webhook", "hook2"] {
            assert!(check_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn placeholders_and_paths() {
        assert_eq!(fill("a {{name}} b {{name}}", &[("name", "x".into())]), "a x b x");
        assert_eq!(type_name("my-web-hook"), "MyWebHookDestination");
        assert_eq!(type_name("report"), "ReportDestination");
        for reserved in ["test", "self", "type", "std"] {
            assert!(check_name(reserved).unwrap_err().contains("keeps for itself"), "{reserved}");
        }
        assert_eq!(relative(Path::new("/a/b/c"), Path::new("/a/sdk")), PathBuf::from("../../sdk"));
        // Every template placeholder is one `create` fills.
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for (path, text) in templates(lang) {
                let filled = fill(
                    text,
                    &["name", "crate", "config_key", "type_name", "sdk_dependency", "sdk_note"]
                        .map(|k| (k, String::new())),
                );
                assert!(!filled.contains("{{"), "{path} has an unknown placeholder");
            }
        }
    }
}
