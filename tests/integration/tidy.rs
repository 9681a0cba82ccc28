//! Source rules no compiler checks: the sans-I/O core names no I/O, and main holds no
//! notes-to-self or debugging leftovers.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
    {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if !path.ends_with("generated") && !path.ends_with("target") {
                files.extend(rust_files(&path));
            }
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_core_is_sans_io() {
    let forbidden = [
        "glommio",
        "std::fs",
        "std::net",
        "SystemTime",
        "Instant",
        "tokio",
    ];
    let core = workspace().join("engine/src/core");
    let files = rust_files(&core);
    assert!(files.len() >= 5, "found the core's files");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} names {word}: the core never does I/O",
                file.display()
            );
        }
    }
}

#[test]
fn no_fixme_or_dbg_on_main() {
    let mut files = Vec::new();
    for dir in [
        "engine/src",
        "wire/src",
        "server/src",
        "client/src",
        "loadgen/src",
        "src",
        "tests",
        "benches",
    ] {
        files.extend(rust_files(&workspace().join(dir)));
    }
    let fixme = ["FIX", "ME"].concat();
    let dbg = ["dbg", "!("].concat();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&fixme), "{} has a {fixme}", file.display());
        assert!(!text.contains(&dbg), "{} has {dbg}", file.display());
    }
}
