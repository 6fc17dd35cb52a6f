//! Embeds `templates/<type>/<file>` and its translations
//! `templates/<type>/<locale>/<file>` into the binary so the release binary
//! alone is a complete install: generates a `(name, source)` table that
//! `notify::templates` loads when no `--templates` directory is given.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // Read when the script runs, not when it was compiled: a build script
    // compiled in another checkout (a copied target/) must still embed
    // this checkout's templates.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let root = Path::new(&manifest).join("templates");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut entries = Vec::new();
    if let Ok(types) = std::fs::read_dir(&root) {
        for ty in types.flatten().filter(|e| e.path().is_dir()) {
            println!("cargo:rerun-if-changed={}", ty.path().display());
            let ty_name = ty.file_name().to_string_lossy().to_string();
            for file in std::fs::read_dir(ty.path()).into_iter().flatten().flatten() {
                let name = format!("{ty_name}/{}", file.file_name().to_string_lossy());
                if !file.path().is_dir() {
                    entries.push((name, file.path()));
                    continue;
                }
                // A locale directory (`<type>/<locale>/<file>`): a translation.
                println!("cargo:rerun-if-changed={}", file.path().display());
                for translated in std::fs::read_dir(file.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if !translated.path().is_dir() {
                        let file_name = translated.file_name().to_string_lossy().to_string();
                        entries.push((format!("{name}/{file_name}"), translated.path()));
                    }
                }
            }
        }
    }
    entries.sort();
    let mut out = String::from("pub static TEMPLATES: &[(&str, &str)] = &[\n");
    for (name, path) in entries {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("embedded_templates.rs");
    std::fs::write(dest, out).unwrap();
}
