//! Where scripts and modules come from. `import "x"` looks next to the importing file first,
//! then in the bundled `stdlib/`; a script name given on the command line is a local file first,
//! then a bundled `scripts/` entry. Both folders are embedded in the binary, so an installed
//! `metaapo` runs them from any directory. Every loaded source is kept for error rendering.

use include_dir::{include_dir, Dir};
use rhai::{Engine, EvalAltResult, Module, Position, Scope, Shared};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

pub static SCRIPTS: Dir = include_dir!("$CARGO_MANIFEST_DIR/scripts");
pub static STDLIB: Dir = include_dir!("$CARGO_MANIFEST_DIR/stdlib");

/// Source texts by the name errors use for them (a path, or `stdlib/x.rhai` when bundled), and
/// the last script added, which imports without a known importer are relative to.
type SourceTable = (HashMap<String, String>, Option<String>);

#[derive(Clone, Default)]
pub struct Sources(Rc<RefCell<SourceTable>>);

impl Sources {
    pub fn add(&self, name: &str, text: &str) {
        self.0.borrow_mut().0.insert(name.into(), text.into());
    }

    pub fn set_main(&self, name: &str) {
        self.0.borrow_mut().1 = Some(name.into());
    }

    pub fn main(&self) -> Option<String> {
        self.0.borrow().1.clone()
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.0.borrow().0.get(name).cloned()
    }
}

fn with_ext(name: &str) -> String {
    if name.ends_with(".rhai") {
        name.to_string()
    } else {
        format!("{name}.rhai")
    }
}

/// A script's name without folder or extension: what names its runs (`scripts/dpo.rhai` -> `dpo`).
pub fn script_stem(name: &str) -> String {
    Path::new(name)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into())
}

/// Finds a script: a local file, else a bundled one (`dpo`, `dpo.rhai` or `scripts/dpo.rhai`).
/// Returns its display name and text.
pub fn find_script(name: &str) -> anyhow::Result<(String, String)> {
    let local = Path::new(name);
    if local.is_file() {
        return Ok((name.to_string(), crate::textfile::read_text(local)?));
    }
    let bare = with_ext(name.trim_start_matches("scripts/"));
    if let Some(f) = SCRIPTS.get_file(&bare) {
        let text = f.contents_utf8().unwrap_or_default().to_string();
        return Ok((format!("scripts/{bare}"), text));
    }
    let mut bundled: Vec<&str> = SCRIPTS.files().filter_map(|f| f.path().to_str()).collect();
    bundled.sort();
    anyhow::bail!(
        "no script {name:?} here or among the bundled scripts: {}",
        bundled.join(", ")
    )
}

pub struct Resolver {
    sources: Sources,
    cache: RefCell<HashMap<String, Shared<Module>>>,
    /// The modules being evaluated, outermost first: an import of one of them is a cycle.
    importing: RefCell<Vec<String>>,
}

/// The same file whatever path reached it (`a.rhai`, `./a.rhai`, `lib/../a.rhai`).
fn identity(name: &str) -> String {
    std::fs::canonicalize(name)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| name.to_string())
}

impl Resolver {
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            cache: RefCell::new(HashMap::new()),
            importing: RefCell::new(vec![]),
        }
    }

    /// The import chain that `name` would close into a cycle, e.g. `a.rhai -> b.rhai -> a.rhai`.
    fn cycle(&self, name: &str) -> Option<String> {
        let mut chain: Vec<String> = self.sources.main().into_iter().collect();
        chain.extend(self.importing.borrow().iter().cloned());
        let me = identity(name);
        let start = chain.iter().position(|c| identity(c) == me)?;
        let mut shown = chain[start..].to_vec();
        shown.push(name.to_string());
        Some(shown.join(" -> "))
    }

    /// The module's display name and text (or why it cannot be read): next to the importer,
    /// else the bundled stdlib.
    fn locate(
        &self,
        importer: Option<&str>,
        path: &str,
    ) -> Option<(String, Result<String, String>)> {
        let file = with_ext(path);
        let main = self.sources.main();
        let dir = importer
            .or(main.as_deref())
            .filter(|s| {
                !s.starts_with("stdlib/") && !s.starts_with("scripts/") && !s.starts_with('<')
            })
            .and_then(|s| Path::new(s).parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let local = dir.join(&file);
        if local.is_file() {
            let text = crate::textfile::read_text(&local).map_err(|e| format!("{e:#}"));
            let name = local
                .strip_prefix(".")
                .unwrap_or(&local)
                .display()
                .to_string();
            return Some((name, text));
        }
        let bare = file.trim_start_matches("stdlib/");
        STDLIB.get_file(bare).map(|f| {
            (
                format!("stdlib/{bare}"),
                Ok(f.contents_utf8().unwrap_or_default().to_string()),
            )
        })
    }
}

impl rhai::ModuleResolver for Resolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<Shared<Module>, Box<EvalAltResult>> {
        let Some((name, text)) = self.locate(source, path) else {
            let mut bundled: Vec<&str> = STDLIB.files().filter_map(|f| f.path().to_str()).collect();
            bundled.sort();
            return Err(Box::new(EvalAltResult::ErrorRuntime(
                format!(
                    "cannot find module {path:?}: not next to the script, and not in the bundled \
                     stdlib ({})",
                    bundled.join(", ")
                )
                .into(),
                pos,
            )));
        };
        let text = text.map_err(|e| Box::new(EvalAltResult::ErrorRuntime(e.into(), pos)))?;
        if let Some(m) = self.cache.borrow().get(&name) {
            return Ok(m.clone());
        }
        if let Some(chain) = self.cycle(&name) {
            return Err(Box::new(EvalAltResult::ErrorRuntime(
                format!("import cycle: {chain}").into(),
                pos,
            )));
        }
        self.sources.add(&name, &text);
        let in_module = |e| Box::new(EvalAltResult::ErrorInModule(name.clone(), e, pos));
        let mut ast = engine.compile(&text).map_err(|e| in_module(e.into()))?;
        ast.set_source(name.as_str());
        self.importing.borrow_mut().push(name.clone());
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine);
        self.importing.borrow_mut().pop();
        let module: Shared<Module> = module.map_err(in_module)?.into();
        self.cache.borrow_mut().insert(name, module.clone());
        Ok(module)
    }
}
