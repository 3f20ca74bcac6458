//! The REPL: one persistent scope (variables and functions survive between inputs), multi-line
//! input while brackets are open, history, tab completion of API names and variables, `:help`,
//! `:load`, `:vars`. An error is printed with a caret and the session goes on.

use super::Host;
use crate::fetch::cache_dir;
use rhai::{Dynamic, Scope, AST};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};
use std::cell::RefCell;
use std::rc::Rc;

struct Completion {
    words: Rc<RefCell<Vec<String>>>,
}

impl Completer for Completion {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let prefix = &line[start..pos];
        let mut hits: Vec<Pair> = self
            .words
            .borrow()
            .iter()
            .filter(|w| w.starts_with(prefix) && !prefix.is_empty())
            .map(|w| Pair {
                display: w.clone(),
                replacement: w.clone(),
            })
            .collect();
        hits.dedup_by(|a, b| a.display == b.display);
        Ok((start, hits))
    }
}

impl Hinter for Completion {
    type Hint = String;
}
impl Highlighter for Completion {}
impl Validator for Completion {}
impl Helper for Completion {}

/// Net count of open brackets outside string literals and comments.
fn open_brackets(text: &str) -> i64 {
    let mut depth = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    depth
}

pub struct Repl {
    host: Host,
    scope: Scope<'static>,
    /// Functions defined so far; each input is merged in so they stay callable.
    functions: AST,
    words: Rc<RefCell<Vec<String>>>,
    inputs: usize,
}

impl Repl {
    pub fn new(host: Host) -> Self {
        let mut words: Vec<String> = host.docs.iter().map(|d| d.name.clone()).collect();
        words.sort();
        words.dedup();
        Self {
            host,
            scope: Scope::new(),
            functions: AST::empty(),
            words: Rc::new(RefCell::new(words)),
            inputs: 0,
        }
    }

    /// Evaluates one input; returns what to print.
    pub fn eval(&mut self, name: &str, text: &str) -> String {
        let ast = match self.host.compile(name, text, &self.scope) {
            Ok(a) => a,
            Err(e) => return e,
        };
        let program = self.functions.merge(&ast);
        crate::interrupt::clear();
        let out = self
            .host
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut self.scope, &program);
        self.functions = program.clone_functions_only();
        let mut words = self.words.borrow_mut();
        for (var, _, _) in self.scope.iter() {
            if !words.iter().any(|w| w == var) {
                words.push(var.to_string());
            }
        }
        drop(words);
        if out.is_ok() {
            self.keep_imports(text);
        }
        match out {
            Ok(v) if v.is_unit() => String::new(),
            Ok(v) => super::describe(&v),
            Err(e) => super::errors::render(&e, name, &self.host.error_context()),
        }
    }

    /// An `import "x" as m;` lasts for one evaluation only; re-register each as a static module
    /// so later inputs can call `m::f()`.
    fn keep_imports(&mut self, text: &str) {
        for stmt in text.split(';') {
            let Some(rest) = stmt.trim().strip_prefix("import ") else {
                continue;
            };
            let Some((path, alias)) = rest.split_once(" as ") else {
                continue;
            };
            let (path, alias) = (path.trim().trim_matches('"'), alias.trim());
            let engine = &self.host.engine;
            if let Ok(module) =
                engine
                    .module_resolver()
                    .resolve(engine, None, path, rhai::Position::NONE)
            {
                self.host.engine.register_static_module(alias, module);
                self.words.borrow_mut().push(format!("{alias}::"));
            }
        }
    }

    fn help(&self, topic: &str) -> String {
        if topic.is_empty() {
            let mut out = String::from(
                "Commands: :help [name]  :load FILE  :vars  :quit\n\
                 Input continues over lines while brackets are open. Functions by family:\n",
            );
            for (family, _) in super::FAMILIES {
                let names: Vec<&str> = self
                    .host
                    .docs
                    .iter()
                    .filter(|d| d.family == family)
                    .map(|d| d.name.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                out += &format!("  {family:9} {}\n", names.join(" "));
            }
            return out;
        }
        let hits: Vec<String> = self
            .host
            .docs
            .iter()
            .filter(|d| d.name == topic || d.name.ends_with(&format!(".{topic}")))
            .map(|d| format!("{}{}\n    {}", d.name, d.signature, d.doc))
            .collect();
        if hits.is_empty() {
            format!("no function named {topic:?}; :help lists them all")
        } else {
            hits.join("\n")
        }
    }

    /// Each variable in scope once (a shadowed one by its latest value), with its script type.
    fn vars(&self) -> String {
        let mut seen = std::collections::HashSet::new();
        let mut lines: Vec<String> = self
            .scope
            .iter()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .filter(|(name, _, _)| seen.insert(name.to_string()))
            .map(|(name, _, v)| {
                let text = super::describe(&v);
                let first = text.lines().next().unwrap_or("");
                let ty = match v.type_name() {
                    "i64" | "i32" => "int",
                    "f64" | "f32" => "float",
                    other => self.host.engine.map_type_name(other),
                };
                format!("{name}: {ty} = {first}")
            })
            .collect();
        lines.reverse();
        lines.join("\n")
    }

    /// Handles one complete input (a command or code).
    pub fn handle(&mut self, input: &str) -> Option<String> {
        let line = input.trim();
        if let Some(cmd) = line.strip_prefix(':') {
            let (cmd, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
            return match cmd {
                "quit" | "q" | "exit" => None,
                "help" | "h" => Some(self.help(arg.trim())),
                "vars" => Some(self.vars()),
                "load" => Some(match super::resolver::find_script(arg.trim()) {
                    Ok((name, text)) => self.eval(&name, &text),
                    Err(e) => format!("error: {e:#}"),
                }),
                other => Some(format!("unknown command :{other}; try :help")),
            };
        }
        if line.is_empty() {
            return Some(String::new());
        }
        self.inputs += 1;
        let name = format!("<repl:{}>", self.inputs);
        Some(self.eval(&name, input))
    }

    /// Reads inputs until end of input or `:quit`.
    pub fn run(mut self) -> anyhow::Result<()> {
        let mut editor: Editor<Completion, DefaultHistory> = Editor::new()?;
        editor.set_helper(Some(Completion {
            words: self.words.clone(),
        }));
        let history = cache_dir().ok().map(|d| d.join("repl_history.txt"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        println!("metaapo REPL: :help lists the API, :quit leaves (Ctrl-D too).");
        let mut buffer = String::new();
        loop {
            let prompt = if buffer.is_empty() {
                "metaapo> "
            } else {
                "   ...> "
            };
            match editor.readline(prompt) {
                Ok(line) => {
                    buffer.push_str(&line);
                    buffer.push('\n');
                    if open_brackets(&buffer) > 0 {
                        continue;
                    }
                    let input = std::mem::take(&mut buffer);
                    let _ = editor.add_history_entry(input.trim_end());
                    match self.handle(&input) {
                        None => break,
                        Some(out) if out.is_empty() => {}
                        Some(out) => println!("{out}"),
                    }
                }
                Err(ReadlineError::Interrupted) => buffer.clear(),
                Err(ReadlineError::Eof) => {
                    if !buffer.trim().is_empty() {
                        eprintln!(
                            "error: the input ended with {} bracket(s) still open; not run:\n{}",
                            open_brackets(&buffer),
                            buffer.trim_end()
                        );
                    }
                    break;
                }
                // The line is consumed, so the session can go on with the next one.
                Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    eprintln!("error: that input line is not UTF-8; it was ignored");
                    buffer.clear();
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(h) = &history {
            if let Some(dir) = h.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = editor.save_history(h);
        }
        Ok(())
    }
}
