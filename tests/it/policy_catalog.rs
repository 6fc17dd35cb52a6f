//! A changeable copy of the built-in registry and templates for the policy
//! tests, passed to `herald` with `--registry`/`--templates` as an operator would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::server::HERALD_BIN;
use crate::support::TestServerBuilder;

pub struct Catalog {
    dir: TempDir,
    registry: Value,
}

impl Catalog {
    /// The built-in registry and every built-in template, copied.
    pub fn builtin() -> Catalog {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::Builder::new()
            .prefix("herald-catalog-")
            .tempdir()
            .expect("temp dir for the catalog");
        let text = std::fs::read_to_string(root.join("data/registry.json")).expect("registry");
        let registry: Value = serde_json::from_str(&text).expect("registry parses");
        for ty in std::fs::read_dir(root.join("templates")).expect("templates dir") {
            let ty = ty.expect("entry").path();
            let target = dir.path().join("templates").join(ty.file_name().unwrap());
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&ty, &target);
        }
        let catalog = Catalog { dir, registry };
        catalog.save();
        catalog
    }

    /// Sets one field of one type's registry entry.
    pub fn set(&mut self, ty: &str, field: &str, value: Value) -> &mut Catalog {
        self.registry["types"][ty][field] = value;
        self.save();
        self
    }

    /// Adds (or replaces) a whole type.
    pub fn add_type(&mut self, ty: &str, def: Value) -> &mut Catalog {
        self.registry["types"][ty] = def;
        self.save();
        self
    }

    /// Writes `templates/<ty>/<file>` (`file` may be `<locale>/<name>`).
    pub fn template(&mut self, ty: &str, file: &str, text: &str) -> &mut Catalog {
        let path = self.templates_dir().join(ty).join(file);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        let dir = self.templates_dir().join(ty);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(file), text).expect("write template");
        self
    }

    pub fn remove_template(&mut self, ty: &str, file: &str) -> &mut Catalog {
        std::fs::remove_file(self.templates_dir().join(ty).join(file)).expect("remove template");
        self
    }

    pub fn registry_path(&self) -> PathBuf {
        self.dir.path().join("registry.json")
    }

    pub fn templates_dir(&self) -> PathBuf {
        self.dir.path().join("templates")
    }

    /// `builder` serving this catalog.
    pub fn serve(&self, builder: TestServerBuilder) -> TestServerBuilder {
        builder
            .arg("--registry")
            .arg(self.registry_path().to_str().unwrap())
            .arg("--templates")
            .arg(self.templates_dir().to_str().unwrap())
    }

    /// Runs `herald check` on this catalog in a clean environment.
    pub fn check(&self) -> Output {
        self.command(&["check"]).output().expect("run herald check")
    }

    /// Runs `herald serve` on this catalog, expecting it to refuse to start:
    /// killed (and reported as success: None) if it is still running after
    /// `timeout`.
    pub fn serve_refused(&self, timeout: Duration) -> Option<Output> {
        let db = self.dir.path().join("herald.db");
        let mut child = self
            .command(&[
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--db",
                db.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald serve");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if child.try_wait().expect("poll herald serve").is_some() {
                return Some(child.wait_with_output().expect("collect output"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(HERALD_BIN);
        command
            .args(args)
            .arg("--registry")
            .arg(self.registry_path())
            .arg("--templates")
            .arg(self.templates_dir())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        command
    }

    fn save(&self) {
        let text = serde_json::to_string_pretty(&self.registry).expect("encode registry");
        std::fs::write(self.registry_path(), text).expect("write registry");
    }
}

/// Copies a type's templates, its locale directories with them.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read a templates directory") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, target).expect("copy");
        }
    }
}
