//! The CA's shape, as ARCHITECTURE.md states it: services own their types, so no module
//! adds behaviour to a type another module (outside its own submodules) defines, and the aggregate the servers hold
//! (`services.rs`) only wires the services together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The identifier at the start of `text` (after generics, if any).
fn ident(text: &str) -> String {
    let text = match text.strip_prefix('<') {
        Some(rest) => rest
            .split_once('>')
            .map_or("", |(_, after)| after.trim_start()),
        None => text,
    };
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn inherent_impls_live_in_the_module_that_defines_the_type() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut defined: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut impls: Vec<(String, PathBuf)> = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read");
        for line in text.lines() {
            let code = line.trim_start();
            let code = code
                .strip_prefix("pub(crate) ")
                .or_else(|| code.strip_prefix("pub "))
                .unwrap_or(code);
            if let Some(rest) = code
                .strip_prefix("struct ")
                .or_else(|| code.strip_prefix("enum "))
            {
                defined.entry(ident(rest)).or_default().push(file.clone());
            }
            if let Some(rest) = line.strip_prefix("impl")
                && !line.contains(" for ")
                && (rest.starts_with(' ') || rest.starts_with('<'))
            {
                impls.push((ident(rest.trim_start()), file.clone()));
            }
        }
    }
    // A type's module is its file, or for a `mod.rs` its folder (submodules of the type's
    // own module, such as the store implementation's, may split its `impl`).
    let within = |home: &PathBuf, file: &PathBuf| {
        home == file
            || (home.file_name().is_some_and(|n| n == "mod.rs")
                && home.parent().is_some_and(|dir| file.starts_with(dir)))
    };
    let mut misplaced = Vec::new();
    for (name, file) in &impls {
        if let Some(homes) = defined.get(name)
            && !homes.iter().any(|home| within(home, file))
        {
            misplaced.push(format!("impl {name} in {}", file.display()));
        }
    }
    assert!(
        !impls.is_empty() && defined.contains_key("Core"),
        "the scan found the crate's types"
    );
    assert!(misplaced.is_empty(), "{misplaced:#?}");
}

#[test]
fn the_service_aggregate_has_no_behaviour_beyond_construction() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/services.rs");
    let text = std::fs::read_to_string(path).expect("services.rs");
    let functions: Vec<&str> = text
        .lines()
        .map(str::trim_start)
        .filter(|l| l.contains("fn "))
        .collect();
    assert_eq!(
        functions,
        ["pub(crate) fn new(core: Core, jwt_signer: Arc<JwtSigner>) -> Result<Self, CaError> {"],
        "Services only wires the services"
    );
}
