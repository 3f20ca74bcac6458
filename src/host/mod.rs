//! The script host: one Rhai engine with every API family registered (each from its own
//! `api_*` file), the module resolver for `import`, print/debug routed to the run log, and
//! Ctrl-C turned into a clean stop.

pub mod api_data;
pub mod api_generate;
pub mod api_meta;
pub mod api_model;
pub mod api_objective;
pub mod api_report;
pub mod api_reward;
pub mod api_run;
pub mod api_score;
pub mod api_serving;
pub mod api_tensor;
pub mod api_train;
pub mod api_world;
pub mod errors;
pub mod jobs;
pub mod limits;
pub mod opts;
pub mod registry;
pub mod repl;
pub mod resolver;
pub mod run;
pub mod script_help;
pub mod types;
pub mod values;

use registry::{Family, FnDoc};
use resolver::{Resolver, Sources};
use rhai::{Dynamic, Engine, Scope, AST};
use run::{interrupted, Run};
use std::rc::Rc;

pub struct Host {
    pub engine: Engine,
    pub docs: Vec<FnDoc>,
    pub run: Rc<Run>,
    pub sources: Sources,
}

/// Registers one family's functions; a family that needs no run state ignores it.
type Register = fn(&mut Family, &Rc<Run>);

/// The API families with their registrations, in the order `metaapo api` lists them.
pub const FAMILIES: [(&str, Register); 13] = [
    ("model", api_model::register),
    ("data", |api, _| api_data::register(api)),
    ("score", |api, _| api_score::register(api)),
    ("generate", api_generate::register),
    ("reward", api_reward::register),
    ("serving", api_serving::register),
    ("objective", |api, _| api_objective::register(api)),
    ("meta", api_meta::register),
    ("tensor", |api, _| api_tensor::register(api)),
    ("train", api_train::register),
    ("report", api_report::register),
    ("run", |api, run| {
        api_run::register(api, run, |run, name, text| {
            Host::new(run).run_script(name, text)
        })
    }),
    ("world", api_world::register),
];

/// How the REPL shows a value: host types by their description, a tensor with its histogram.
pub fn describe(v: &Dynamic) -> String {
    if let Some(t) = v.clone().try_cast::<api_tensor::Tensor>() {
        return t.summary();
    }
    if let Some(p) = v.clone().try_cast::<crate::policy::Policy>() {
        return p.to_string();
    }
    if let Some(s) = v.clone().try_cast::<types::ScoresValue>() {
        return s.to_string();
    }
    if let Some(p) = v.clone().try_cast::<types::Pairs>() {
        return p.to_string();
    }
    if let Some(w) = v.clone().try_cast::<types::WorldHandle>() {
        return w.to_string();
    }
    if let Some(r) = v.clone().try_cast::<types::RewardModel>() {
        return r.to_string();
    }
    if let Some(l) = v.clone().try_cast::<types::Learner>() {
        return l.to_string();
    }
    if let Some(b) = v.clone().try_cast::<types::MetaBuffer>() {
        return b.to_string();
    }
    if let Some(s) = v.clone().try_cast::<types::ServerHandle>() {
        return s.to_string();
    }
    if let Some(o) = v.clone().try_cast::<types::Optimizer>() {
        return o.to_string();
    }
    // A one-line string is quoted, so "" and " " show; a multi-line one (a summary, a table)
    // prints as it reads.
    if v.is_string() {
        let s = v.to_string();
        return if s.contains('\n') {
            s
        } else {
            format!("{s:?}")
        };
    }
    v.to_string()
}

impl Host {
    pub fn new(run: Rc<Run>) -> Self {
        let mut engine = Engine::new();
        engine.set_strict_variables(true);
        // `p.bata` for `p.beta` is an error naming the key, not a silent ().
        engine.set_fail_on_invalid_map_property(true);
        run.options.limits.apply(&mut engine);
        let sources = Sources::default();
        engine.set_module_resolver(Resolver::new(sources.clone()));
        let r = run.clone();
        engine.on_print(move |s| r.print(s));
        let r = run.clone();
        engine.on_debug(move |s, src, pos| {
            let at = match (src, pos.line()) {
                (Some(src), Some(l)) => format!("{src}:{l}: "),
                (None, Some(l)) => format!("line {l}: "),
                _ => String::new(),
            };
            r.print(&format!("[debug] {at}{s}"));
        });
        engine.on_progress(|_| interrupted().then(|| Dynamic::from("interrupted")));
        let mut docs = Vec::new();
        for (family, register) in FAMILIES {
            register(&mut Family::new(&mut engine, &mut docs, family), &run);
        }
        Self {
            engine,
            docs,
            run,
            sources,
        }
    }

    pub fn error_context(&self) -> errors::Context<'_> {
        errors::Context {
            sources: &self.sources,
            limits: &self.run.options.limits,
            docs: &self.docs,
        }
    }

    /// Compiles a script named `name`; an error is rendered with file, line, column and caret.
    pub fn compile(&self, name: &str, text: &str, scope: &Scope) -> Result<AST, String> {
        self.sources.add(name, text);
        self.sources.set_main(name);
        let mut ast = self
            .engine
            .compile_with_scope(scope, text)
            .map_err(|e| errors::render(&e.into(), name, &self.error_context()))?;
        ast.set_source(name);
        Ok(ast)
    }

    /// Compiles a script and every module it imports (each import resolved where it stands,
    /// so an error points at its line), running nothing but the modules' top levels.
    pub fn check(&self, name: &str, text: &str) -> Result<(), String> {
        let ast = self.compile(name, text, &Scope::new())?;
        let resolver = self.engine.module_resolver();
        let mut result = Ok(());
        ast.walk(&mut |path| {
            if let Some(rhai::ASTNode::Stmt(rhai::Stmt::Import(x, _))) = path.last() {
                if let rhai::Expr::StringConstant(module, pos) = &x.0 {
                    result = resolver
                        .resolve(&self.engine, Some(name), module, *pos)
                        .map(|_| ());
                }
            }
            result.is_ok()
        });
        result
            .and_then(|()| self.unknown_calls(&ast))
            .map_err(|e| errors::render(&e, name, &self.error_context()))
    }

    /// The first call (plain or method) of a function that neither the host, Rhai's packages
    /// nor the script itself defines. Calls into imported modules (`m::f`) and of variables
    /// holding function pointers are left to run time.
    fn unknown_calls(&self, ast: &AST) -> Result<(), Box<rhai::EvalAltResult>> {
        // Rhai's keyword functions, which no signature lists.
        const KEYWORDS: [&str; 10] = [
            "print",
            "debug",
            "type_of",
            "eval",
            "Fn",
            "call",
            "curry",
            "is_shared",
            "is_def_var",
            "is_def_fn",
        ];
        let mut known: std::collections::HashSet<String> = self
            .engine
            .gen_fn_signatures(true)
            .iter()
            .filter_map(|s| s.split('(').next().map(|n| n.trim().to_string()))
            .collect();
        known.extend(KEYWORDS.iter().map(|k| k.to_string()));
        known.extend(ast.iter_functions().map(|f| f.name.to_string()));
        let mut variables = std::collections::HashSet::new();
        let mut calls = vec![];
        ast.walk(&mut |path| {
            match path.last() {
                Some(rhai::ASTNode::Stmt(rhai::Stmt::Var(x, ..))) => {
                    variables.insert(x.0.name.to_string());
                }
                Some(
                    rhai::ASTNode::Expr(
                        rhai::Expr::FnCall(f, pos) | rhai::Expr::MethodCall(f, pos),
                    )
                    | rhai::ASTNode::Stmt(rhai::Stmt::FnCall(f, pos)),
                ) if f.namespace.is_empty() && f.op_token.is_none() => {
                    calls.push((f.name.to_string(), *pos));
                }
                _ => {}
            }
            true
        });
        match calls
            .into_iter()
            .find(|(n, _)| !known.contains(n) && !variables.contains(n))
        {
            Some((name, pos)) => Err(Box::new(rhai::EvalAltResult::ErrorFunctionNotFound(
                format!("{name} (no host, Rhai or script function has this name)"),
                pos,
            ))),
            None => Ok(()),
        }
    }

    /// Whether the script may read `--set`: it calls `params` itself, or imports modules that
    /// might. Checked before running, so a `--set` that nothing can read is refused at once.
    pub fn may_read_params(ast: &AST) -> bool {
        !ast.walk(&mut |path| match path.last() {
            Some(rhai::ASTNode::Stmt(rhai::Stmt::Import(..))) => false,
            Some(rhai::ASTNode::Expr(rhai::Expr::FnCall(f, _))) => f.name != "params",
            _ => true,
        })
    }

    /// Runs a script to the end; errors come back rendered.
    pub fn run_script(&self, name: &str, text: &str) -> Result<(), String> {
        let mut scope = Scope::new();
        let ast = self.compile(name, text, &scope)?;
        self.engine
            .run_ast_with_scope(&mut scope, &ast)
            .map_err(|e| errors::render(&e, name, &self.error_context()))
    }
}
