//! Modules in layers: no module of whizbang-core imports a module that
//! imports it, directly or through others.
//!
//! The test reads the crate's `src/` files, builds the module import graph and
//! fails naming the cycle (each step with the file and line of the import).
//!
//! How the graph is built:
//! - A node is a module file (`src/sync/table.rs` is `sync::table`, a `mod.rs`
//!   is its directory's module, `lib.rs` is the crate root). Inline modules
//!   (`mod tests { .. }`) belong to their file.
//! - An edge is a path that names another module: `use crate::..`,
//!   `use super::..`, `use self::..`, a `use` of a child module, and the same
//!   paths written inline in code (`crate::store::EventLocation`).
//!   Comments (doc links included) and string literals are not read.
//! - A path to an item goes to the module that defines it: a name a module
//!   re-exports (`pub use child::Item`) resolves to where the re-export points.
//!   A `pub use` itself is a facade, not a dependency; a module that uses in
//!   its own code a name it re-exports from another module depends on that module.
//! - Two levels are checked: module files, and top-level modules (`sync` with
//!   all its files), so that no layer reaches back into one above it through
//!   another file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A module path below the crate root (`["sync", "table"]`; empty for the root).
type ModPath = Vec<String>;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// Tokens with their line numbers: identifiers, `::` and single punctuation;
/// comments, strings, chars and numbers left out.
fn tokenize(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == 'r' && (next == Some('#') || next == Some('"')) && raw_string_at(&c, i) {
            // r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while c[j] == '#' {
                hashes += 1;
                j += 1;
            }
            j += 1; // the opening quote
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '\n' {
                    line += 1;
                }
                if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if i < c.len() && c[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\'') or a lifetime ('a, 'static).
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            // A byte string or byte char: b"..", b'..'
            if word == "b" && i < c.len() && (c[i] == '"' || c[i] == '\'') {
                continue;
            }
            out.push((Tok::Ident(word), line));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                i += 1;
            }
        } else if ch == ':' && next == Some(':') {
            out.push((Tok::Sep, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

fn raw_string_at(c: &[char], i: usize) -> bool {
    // `r` must start a token (not end an identifier such as `for`).
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return false;
    }
    let mut j = i + 1;
    while j < c.len() && c[j] == '#' {
        j += 1;
    }
    c.get(j) == Some(&'"')
}

fn ident(t: Option<&(Tok, usize)>) -> Option<&str> {
    match t {
        Some((Tok::Ident(s), _)) => Some(s),
        _ => None,
    }
}

/// One path found in a file: where it is written (the inline module it sits
/// in, the line), its segments as written, and what kind of statement holds it.
#[derive(Debug)]
struct Found {
    /// The inline modules around it, below the file's module.
    inline: Vec<String>,
    segments: Vec<String>,
    line: usize,
    /// Inside a `pub use` (a re-export), with the name it is exported as.
    reexport: Option<String>,
}

/// Expands a use tree starting at `toks[*i]` into full paths.
fn use_tree(
    toks: &[(Tok, usize)],
    i: &mut usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, String, usize)>,
) {
    let mut path = prefix.to_vec();
    loop {
        match toks.get(*i) {
            Some((Tok::Ident(s), line)) => {
                let line = *line;
                path.push(s.clone());
                *i += 1;
                if toks.get(*i).map(|t| &t.0) == Some(&Tok::Sep) {
                    *i += 1;
                    continue;
                }
                // The end of a path: maybe `as alias`.
                let mut name = s.clone();
                if ident(toks.get(*i)) == Some("as") {
                    if let Some(alias) = ident(toks.get(*i + 1)) {
                        name = alias.to_string();
                    }
                    *i += 2;
                }
                if name == "self" {
                    path.pop();
                    name = path.last().cloned().unwrap_or_default();
                }
                out.push((path, name, line));
                return;
            }
            Some((Tok::Punct('{'), _)) => {
                *i += 1;
                loop {
                    match toks.get(*i) {
                        Some((Tok::Punct('}'), _)) => {
                            *i += 1;
                            return;
                        }
                        Some((Tok::Punct(','), _)) => *i += 1,
                        None => return,
                        _ => use_tree(toks, i, &path, out),
                    }
                }
            }
            Some((Tok::Punct('*'), line)) => {
                out.push((path, "*".to_string(), *line));
                *i += 1;
                return;
            }
            Some((Tok::Sep, _)) => *i += 1, // a leading `::`
            _ => return,
        }
    }
}

/// Every path in a file that may name a module of the crate.
fn scan(toks: &[(Tok, usize)]) -> (Vec<Found>, Vec<(String, usize)>) {
    let mut found = Vec::new();
    // Identifiers outside `use` statements, for names a module re-exports.
    let mut words = Vec::new();
    // Inline modules: (name, brace depth at which it closes).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                i += 1;
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some(name), Some((Tok::Punct('{'), _))) =
                    (ident(toks.get(i + 1)), toks.get(i + 2))
                {
                    inline.push((name.to_string(), depth));
                }
                i += 1;
            }
            Tok::Ident(w) if w == "use" => {
                // `pub use`, `pub(crate) use`, `pub(super) use`, `pub(in ..) use`
                let public = (1..=6)
                    .filter_map(|back| i.checked_sub(back))
                    .take_while(|j| {
                        !matches!(
                            toks[*j].0,
                            Tok::Punct(';') | Tok::Punct('}') | Tok::Punct('{')
                        )
                    })
                    .any(|j| ident(toks.get(j)) == Some("pub"));
                let mut j = i + 1;
                let mut paths = Vec::new();
                use_tree(toks, &mut j, &[], &mut paths);
                let here: Vec<String> = inline.iter().map(|(n, _)| n.clone()).collect();
                for (segments, name, line) in paths {
                    found.push(Found {
                        inline: here.clone(),
                        segments,
                        line,
                        reexport: public.then_some(name),
                    });
                }
                while j < toks.len() && toks[j].0 != Tok::Punct(';') {
                    j += 1;
                }
                i = j + 1;
            }
            Tok::Ident(w) => {
                let after_sep = i > 0 && toks[i - 1].0 == Tok::Sep;
                if !after_sep && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Sep) {
                    // A path written in code: `crate::a::B`, `super::x`, `child::Item`.
                    let line = toks[i].1;
                    let mut segments = vec![w.clone()];
                    let mut j = i + 1;
                    while toks.get(j).map(|t| &t.0) == Some(&Tok::Sep) {
                        match ident(toks.get(j + 1)) {
                            Some(s) => segments.push(s.to_string()),
                            None => break,
                        }
                        j += 2;
                    }
                    found.push(Found {
                        inline: inline.iter().map(|(n, _)| n.clone()).collect(),
                        segments,
                        line,
                        reexport: None,
                    });
                    i = j;
                } else {
                    words.push((w.clone(), toks[i].1));
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    (found, words)
}

struct Module {
    file: PathBuf,
    found: Vec<Found>,
    words: Vec<(String, usize)>,
}

fn module_path(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("a file under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "lib.rs" | "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_string()),
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The crate's module graph: edges (from, to) with where the import is written.
struct Graph {
    modules: BTreeMap<ModPath, Module>,
    /// Per module, the names it re-exports and the absolute path each points to.
    reexports: BTreeMap<ModPath, BTreeMap<String, ModPath>>,
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".to_string()
    } else {
        m.join("::")
    }
}

impl Graph {
    fn load(src: &Path) -> Graph {
        let mut files = Vec::new();
        rust_files(src, &mut files);
        assert!(
            files.iter().any(|f| f.ends_with("lib.rs")),
            "no lib.rs under {}",
            src.display()
        );
        let mut modules = BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            let (found, words) = scan(&tokenize(&text));
            modules.insert(
                module_path(src, &file),
                Module {
                    file: file.strip_prefix(src).unwrap_or(&file).to_path_buf(),
                    found,
                    words,
                },
            );
        }
        let mut graph = Graph {
            modules,
            reexports: BTreeMap::new(),
        };
        let mut reexports = BTreeMap::new();
        for (path, m) in &graph.modules {
            let mut names = BTreeMap::new();
            for f in &m.found {
                if let Some(name) = &f.reexport {
                    if !f.inline.is_empty() || name == "*" {
                        continue;
                    }
                    if let Some(abs) = graph.absolute(path, &f.inline, &f.segments) {
                        names.insert(name.clone(), abs);
                    }
                }
            }
            reexports.insert(path.clone(), names);
        }
        graph.reexports = reexports;
        graph
    }

    fn is_module(&self, m: &[String]) -> bool {
        self.modules.contains_key(m)
    }

    /// The absolute path of `segments` written in module `at` (inside its
    /// `inline` modules), or `None` when it names something outside the crate.
    fn absolute(&self, at: &[String], inline: &[String], segments: &[String]) -> Option<ModPath> {
        let mut here: Vec<String> = at.iter().chain(inline).cloned().collect();
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                here.clear();
                rest = &rest[1..];
            }
            Some("super") | Some("self") => {
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "super" => {
                            here.pop()?;
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = &rest[1..];
                }
            }
            Some(first) => {
                // Relative to the module: a child module of the file's module
                // (inline modules have no file children).
                if !inline.is_empty() {
                    return None;
                }
                let mut child = here.clone();
                child.push(first.to_string());
                if !self.is_module(&child) {
                    return None;
                }
            }
            None => return None,
        }
        here.extend(rest.iter().cloned());
        Some(here)
    }

    /// The module that defines what `abs` names: the longest module prefix,
    /// then through that module's re-exports.
    fn defining(&self, abs: &[String], hops: usize) -> ModPath {
        let mut n = abs.len();
        while n > 0 && !self.is_module(&abs[..n]) {
            n -= 1;
        }
        let module = abs[..n].to_vec();
        if hops < 16 {
            if let Some(name) = abs.get(n) {
                if let Some(target) = self.reexports.get(&module).and_then(|r| r.get(name)) {
                    let mut next = target.clone();
                    next.extend(abs[n + 1..].iter().cloned());
                    return self.defining(&next, hops + 1);
                }
            }
        }
        module
    }

    /// Every import edge between two different modules, with the file and
    /// line of one import that makes it.
    fn edges(&self) -> BTreeMap<(ModPath, ModPath), String> {
        let mut edges = BTreeMap::new();
        for (path, m) in &self.modules {
            let mut add = |to: ModPath, line: usize| {
                if &to != path {
                    edges
                        .entry((path.clone(), to))
                        .or_insert_with(|| format!("{}:{line}", m.file.display()));
                }
            };
            for f in &m.found {
                if f.reexport.is_some() {
                    continue; // a facade, not a dependency
                }
                if let Some(abs) = self.absolute(path, &f.inline, &f.segments) {
                    add(self.defining(&abs, 0), f.line);
                }
            }
            // Names this module re-exports from elsewhere and uses itself.
            if let Some(names) = self.reexports.get(path) {
                for (word, line) in &m.words {
                    if let Some(target) = names.get(word) {
                        add(self.defining(target, 0), *line);
                    }
                }
            }
        }
        edges
    }
}

/// A cycle in `edges` as its modules in order, if there is one.
fn find_cycle<N: Ord + Clone>(edges: &BTreeMap<(N, N), String>) -> Option<Vec<N>> {
    let mut next: BTreeMap<&N, Vec<&N>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    // 0: unseen, 1: on the stack, 2: done.
    let mut state: BTreeMap<&N, u8> = BTreeMap::new();
    fn visit<'a, N: Ord>(
        n: &'a N,
        next: &BTreeMap<&'a N, Vec<&'a N>>,
        state: &mut BTreeMap<&'a N, u8>,
        stack: &mut Vec<&'a N>,
    ) -> Option<Vec<&'a N>> {
        state.insert(n, 1);
        stack.push(n);
        for &m in next.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|x| *x == m).expect("on the stack");
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m);
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, next, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let starts: Vec<&N> = next.keys().copied().collect();
    for n in starts {
        if state.get(n).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, &next, &mut state, &mut stack) {
                return Some(c.into_iter().cloned().collect());
            }
        }
    }
    None
}

fn describe(cycle: &[ModPath], edges: &BTreeMap<(ModPath, ModPath), String>) -> String {
    let mut s = String::new();
    for w in cycle.windows(2) {
        let at = edges
            .get(&(w[0].clone(), w[1].clone()))
            .map_or("?", String::as_str);
        let _ = writeln!(s, "  {} imports {}  ({at})", show(&w[0]), show(&w[1]));
    }
    s
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let graph = Graph::load(&src_dir());
    let edges = graph.edges();
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "module cycle in whizbang-core/src: each module below imports the next, and the \
             last imports the first. Move what both need into a lower module (or pass it down \
             through a trait) so that imports only go one way:\n{}",
            describe(&cycle, &edges)
        );
    }
}

#[test]
fn no_top_level_module_reaches_back_into_one_that_imports_it() {
    let graph = Graph::load(&src_dir());
    let mut top: BTreeMap<(ModPath, ModPath), String> = BTreeMap::new();
    for ((from, to), at) in graph.edges() {
        let (a, b) = (
            from[..from.len().min(1)].to_vec(),
            to[..to.len().min(1)].to_vec(),
        );
        // The crate root declares and re-exports every module: it is the top.
        if a != b && !a.is_empty() && !b.is_empty() {
            top.entry((a, b)).or_insert(at);
        }
    }
    if let Some(cycle) = find_cycle(&top) {
        panic!(
            "layer cycle between top-level modules of whizbang-core/src (one example import \
             per step; each module includes its files). Move what both need into the lower \
             layer so that imports only go one way:\n{}",
            describe(&cycle, &top)
        );
    }
}

// ------------------------------------------------ the checker checks

fn graph_of(files: &[(&str, &str)]) -> BTreeMap<(ModPath, ModPath), String> {
    let dir = std::env::temp_dir().join(format!(
        "whizbang-layers-{}-{}",
        std::process::id(),
        files.len() * 31 + files.iter().map(|f| f.1.len()).sum::<usize>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("a temp dir");
        std::fs::write(&p, text).expect("a temp file");
    }
    let edges = Graph::load(&dir).edges();
    let _ = std::fs::remove_dir_all(&dir);
    edges
}

fn names(cycle: Option<Vec<ModPath>>) -> Option<Vec<String>> {
    cycle.map(|c| c.iter().map(|m| show(m)).collect())
}

#[test]
fn the_checker_names_a_cycle_through_a_use_and_an_inline_path() {
    let edges = graph_of(&[
        ("lib.rs", "mod a;\nmod b;\n"),
        ("a.rs", "use crate::b::Thing;\npub struct Other;\n"),
        (
            "b.rs",
            "// crate::c::Doc is a comment\npub struct Thing(crate::a::Other);\n",
        ),
    ]);
    let cycle = names(find_cycle(&edges)).expect("a cycle");
    assert_eq!(cycle, ["a", "b", "a"]);
    assert!(describe(&find_cycle(&edges).expect("a cycle"), &edges).contains("a.rs:1"));
}

#[test]
fn the_checker_follows_reexports_to_where_an_item_is_defined() {
    // `x::one` uses `super::Two`, which `x` re-exports from `x::two`; `x::two`
    // uses `x::one` in return: a cycle, though neither names the other.
    let edges = graph_of(&[
        ("lib.rs", "mod x;\n"),
        (
            "x/mod.rs",
            "mod one;\nmod two;\npub use two::Two;\npub use one::One;\n",
        ),
        ("x/one.rs", "use super::Two;\npub struct One;\n"),
        ("x/two.rs", "use super::one::One;\npub struct Two;\n"),
    ]);
    let cycle = names(find_cycle(&edges)).expect("a cycle");
    assert_eq!(cycle, ["x::one", "x::two", "x::one"]);
}

#[test]
fn the_checker_accepts_layers_and_facades() {
    // The parent re-exports its children (a facade), the children import each
    // other one way and the parent's own items; strings and doc links do not count.
    let edges = graph_of(&[
        ("lib.rs", "pub mod x;\npub use x::{Low, High};\n"),
        (
            "x/mod.rs",
            "mod low;\nmod high;\npub use low::Low;\npub use high::High;\npub struct Root;\n",
        ),
        (
            "x/low.rs",
            "use super::Root;\n/// [`super::High`]\npub struct Low(Root);\nconst S: &str = \"super::high::X\";\n",
        ),
        (
            "x/high.rs",
            "use super::low::Low;\npub struct High(Low, std::vec::Vec<u8>, char);\nconst C: char = '{';\n",
        ),
    ]);
    assert_eq!(names(find_cycle(&edges)), None, "{edges:?}");
    assert!(edges.contains_key(&(
        vec!["x".into(), "high".into()],
        vec!["x".into(), "low".into()]
    )));
    assert!(edges.contains_key(&(vec!["x".into(), "low".into()], vec!["x".into()])));
}
