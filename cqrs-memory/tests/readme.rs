//! The dependency lines the README and the guide tell users to write name
//! the packages as they are published, at the version this workspace builds.
//! (The quick start's code is compiled and run as a doctest of this crate.)

use std::path::{Path, PathBuf};

/// The folders of the published crates.
const CRATES: [&str; 3] = ["cqrs-core", "cqrs-memory", "cqrs-dynamodb"];

fn repository() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The package name in a crate's manifest.
fn package_name(dir: &str) -> String {
    let manifest = read(&repository().join(dir).join("Cargo.toml"));
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("name = \"")?.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{dir}/Cargo.toml has no package name"))
        .to_owned()
}

/// The requirement users write for this version: `0.1.0` → `0.1`.
fn requirement() -> &'static str {
    let version = env!("CARGO_PKG_VERSION");
    version
        .rsplit_once('.')
        .map_or(version, |(major_minor, _)| major_minor)
}

/// The ```toml blocks of a Markdown text.
fn toml_blocks(markdown: &str) -> Vec<&str> {
    markdown
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect()
}

/// Every dependency line on a crate of ours in `markdown`: (package, line).
fn our_dependency_lines(markdown: &str) -> Vec<(String, String)> {
    toml_blocks(markdown)
        .into_iter()
        .flat_map(str::lines)
        .filter(|line| line.starts_with("cqrs"))
        .map(|line| {
            let package = line.split([' ', '=', '.']).next().unwrap_or_default();
            (package.to_owned(), line.to_owned())
        })
        .collect()
}

#[test]
fn the_quick_start_takes_core_and_memory_from_the_registry() {
    let readme = read(&repository().join("README.md"));
    let lines = our_dependency_lines(&readme);
    for dir in ["cqrs-core", "cqrs-memory"] {
        let expected = format!("{} = \"{}\"", package_name(dir), requirement());
        assert!(
            lines.iter().any(|(_, line)| line.starts_with(&expected)),
            "README.md's quick start should say `{expected}`; it says {lines:?}"
        );
    }
}

#[test]
fn every_dependency_line_in_the_docs_names_a_package_at_this_version() {
    let packages: Vec<String> = CRATES.iter().map(|dir| package_name(dir)).collect();
    let mut pages: Vec<PathBuf> = vec![repository().join("README.md")];
    pages.extend(CRATES.iter().map(|dir| repository().join(dir).join("README.md")));
    let docs = std::fs::read_dir(repository().join("docs")).expect("docs/");
    pages.extend(
        docs.filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "md")),
    );
    let mut checked = 0;
    for page in &pages {
        for (package, line) in our_dependency_lines(&read(page)) {
            assert!(
                packages.contains(&package),
                "{}: `{line}` names `{package}`, not one of {packages:?}",
                page.display()
            );
            assert!(
                line.contains(&format!("\"{}\"", requirement())),
                "{}: `{line}` should ask for version \"{}\"",
                page.display(),
                requirement()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "only {checked} dependency lines found: is the scan still right?"
    );
}
