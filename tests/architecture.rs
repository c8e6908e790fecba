//! The shape of `src/`, checked: imports run one way (no circle between files), nothing
//! outside `src/io/` names an I/O backend, and no file is over 600 lines before its tests.
//!
//! Imports are read from the source text: every `use` (braces expanded) and every inline
//! `crate::`/`super::` path outside a file's test module. A path is followed to the file that
//! defines the item it names; a `pub use` re-export is followed to its origin, so a folder's
//! `mod.rs` that only re-exports is a facade, not a dependency on its children.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINES_BEFORE_TESTS: usize = 600;

struct File {
    path: String,
    module: Vec<String>,
    /// The text before the test module.
    code: String,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The library's files (binaries are crates of their own), with their module paths.
fn library() -> Vec<File> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    paths.sort();
    let mut files = Vec::new();
    for path in paths {
        let rel = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        if rel == "main.rs" || rel.starts_with("bin/") {
            continue;
        }
        let mut module: Vec<String> = rel.trim_end_matches(".rs").split('/').map(String::from).collect();
        if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
            module.pop();
        }
        let text = fs::read_to_string(&path).unwrap();
        files.push(File { path: format!("src/{rel}"), module, code: before_tests(&text).to_string() });
    }
    files
}

/// The text before `#[cfg(test)] mod tests`.
fn before_tests(text: &str) -> &str {
    let mut offset = 0;
    let mut previous = "";
    for line in text.split_inclusive('\n') {
        let line_trimmed = line.trim_start().trim_start_matches("pub(crate) ").trim_start_matches("pub(super) ");
        if previous.trim() == "#[cfg(test)]" && line_trimmed.starts_with("mod tests") {
            return &text[..offset - previous.len()];
        }
        offset += line.len();
        previous = line;
    }
    text
}

/// Lines and `/* */`-free text without `//` comments or string literals' contents.
fn strip(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    for line in code.lines() {
        let mut in_str = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_str {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_str = false;
                    out.push('"');
                }
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_str = true;
            }
            out.push(c);
        }
        out.push('\n');
    }
    out
}

/// `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e` (`self` in braces names `a`).
fn expand(tree: &str) -> Vec<String> {
    // `x as y` names x: the rename is cut off here, while the words are still apart.
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut renamed = Vec::new();
    let mut skip = false;
    for (i, w) in words.iter().enumerate() {
        if skip {
            // The new name, and whatever punctuation stuck to it.
            renamed.push(w.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_'));
            skip = false;
        } else if *w == "as" && i > 0 {
            skip = true;
        } else {
            renamed.push(w);
        }
    }
    let tree: String = renamed.concat();
    let Some(open) = tree.find('{') else { return vec![tree] };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let mut out = Vec::new();
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        for tail in expand(part) {
            if tail == "self" {
                out.push(prefix.trim_end_matches("::").to_string());
            } else {
                out.push(format!("{prefix}{tail}"));
            }
        }
    }
    out
}

/// Every `use` in the code: (is `pub use`, expanded path).
fn uses(code: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = find_use(rest) {
        let public = rest[..at].trim_end().ends_with("pub") || rest[..at].trim_end().ends_with(')');
        let body = &rest[at + 4..];
        let end = body.find(';').unwrap_or(body.len());
        for path in expand(&body[..end]) {
            out.push((public, path));
        }
        rest = &body[end..];
    }
    out
}

/// The offset of the next `use ` that starts a statement.
fn find_use(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = code[from..].find("use ") {
        let at = from + i;
        let before = code[..at].chars().last();
        if before.is_none_or(|c| c == '\n' || c == ' ' || c == '{' || c == ';') {
            let line_start = code[..at].rfind('\n').map_or(0, |n| n + 1);
            let lead = code[line_start..at].trim();
            if lead.is_empty() || lead == "pub" || lead.starts_with("pub(") {
                return Some(at);
            }
        }
        from = at + 4;
    }
    None
}

/// Inline paths beginning with `crate::` or `super::`.
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            out.push(code[at..end].trim_end_matches(':').to_string());
        }
    }
    out
}

/// Items a module defines at its top level.
fn definitions(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in code.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            continue;
        }
        let mut words = line.split_whitespace().peekable();
        while let Some(w) = words.peek() {
            if w.starts_with("pub") || *w == "unsafe" || *w == "async" || *w == "extern" {
                words.next();
            } else {
                break;
            }
        }
        if let (Some(kind), Some(name)) = (words.next(), words.next()) {
            if ["struct", "enum", "fn", "trait", "type", "const", "static", "union", "mod", "macro_rules!"]
                .contains(&kind)
            {
                let name: String = name.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                names.insert(name);
            }
        }
    }
    names
}

struct Crate {
    files: Vec<File>,
    by_module: HashMap<Vec<String>, usize>,
    defined: Vec<BTreeSet<String>>,
    reexported: Vec<HashMap<String, Vec<String>>>,
}

impl Crate {
    fn load() -> Crate {
        let files = library();
        let by_module = files.iter().enumerate().map(|(i, f)| (f.module.clone(), i)).collect();
        let defined = files.iter().map(|f| definitions(&strip(&f.code))).collect();
        let mut krate = Crate { files, by_module, defined, reexported: Vec::new() };
        krate.reexported = (0..krate.files.len())
            .map(|i| {
                let code = strip(&krate.files[i].code);
                uses(&code)
                    .into_iter()
                    .filter(|(public, _)| *public)
                    .filter_map(|(_, path)| {
                        let abs = krate.absolute(i, &path)?;
                        Some((abs.last()?.clone(), abs))
                    })
                    .collect()
            })
            .collect();
        krate
    }

    /// A path as written in file `i`, made absolute (None: outside the crate).
    fn absolute(&self, i: usize, path: &str) -> Option<Vec<String>> {
        let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let mut module = self.files[i].module.clone();
        let mut rest = &segments[..];
        match rest.first()? {
            &"crate" => {
                module.clear();
                rest = &rest[1..];
            }
            &"self" => rest = &rest[1..],
            &"super" => {
                while rest.first() == Some(&"super") {
                    module.pop()?;
                    rest = &rest[1..];
                }
            }
            first => {
                let mut child = module.clone();
                child.push(first.to_string());
                if !self.by_module.contains_key(&child) {
                    return None;
                }
            }
        }
        module.extend(rest.iter().map(|s| s.to_string()));
        Some(module)
    }

    /// The file that defines what an absolute path names.
    fn origin(&self, path: &[String], depth: usize) -> Option<usize> {
        let mut split = path.len();
        while split > 0 && !self.by_module.contains_key(&path[..split]) {
            split -= 1;
        }
        let file = *self.by_module.get(&path[..split])?;
        let Some(name) = path.get(split) else { return Some(file) };
        if self.defined[file].contains(name) || depth > 8 {
            return Some(file);
        }
        match self.reexported[file].get(name) {
            Some(target) if target.as_slice() != path => self.origin(target, depth + 1),
            _ => Some(file),
        }
    }

    /// File `i`'s imports (the files it uses items of), with the path that made each.
    fn imports(&self, i: usize) -> BTreeMap<usize, String> {
        let code = strip(&self.files[i].code);
        let mut paths: Vec<(bool, String)> = uses(&code);
        paths.extend(inline_paths(&code).into_iter().map(|p| (false, p)));
        let mut out = BTreeMap::new();
        for (public, path) in paths {
            let Some(abs) = self.absolute(i, &path) else { continue };
            if public {
                // A re-export is not a use: whoever names it is led to its origin.
                continue;
            }
            if let Some(target) = self.origin(&abs, 0) {
                if target != i {
                    out.entry(target).or_insert(path);
                }
            }
        }
        out
    }
}

/// Strongly connected components with more than one file (Tarjan).
fn circles(edges: &[BTreeMap<usize, String>]) -> Vec<Vec<usize>> {
    struct Walk<'a> {
        edges: &'a [BTreeMap<usize, String>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        found: Vec<Vec<usize>>,
    }
    fn visit(w: &mut Walk, v: usize) {
        w.index[v] = Some(w.next);
        w.low[v] = w.next;
        w.next += 1;
        w.stack.push(v);
        w.on_stack[v] = true;
        for &u in w.edges[v].keys() {
            match w.index[u] {
                None => {
                    visit(w, u);
                    w.low[v] = w.low[v].min(w.low[u]);
                }
                Some(iu) if w.on_stack[u] => w.low[v] = w.low[v].min(iu),
                _ => {}
            }
        }
        if Some(w.low[v]) == w.index[v] {
            let mut component = Vec::new();
            while let Some(u) = w.stack.pop() {
                w.on_stack[u] = false;
                component.push(u);
                if u == v {
                    break;
                }
            }
            if component.len() > 1 {
                w.found.push(component);
            }
        }
    }
    let n = edges.len();
    let mut w = Walk {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in 0..n {
        if w.index[v].is_none() {
            visit(&mut w, v);
        }
    }
    w.found
}

#[test]
fn imports_run_one_way() {
    let krate = Crate::load();
    let edges: Vec<_> = (0..krate.files.len()).map(|i| krate.imports(i)).collect();
    let found = circles(&edges);
    let mut report = String::new();
    for component in &found {
        let names: Vec<&str> = component.iter().map(|&v| krate.files[v].path.as_str()).collect();
        report.push_str(&format!("circle of {}:\n", names.join(", ")));
        for &v in component {
            for (u, path) in &edges[v] {
                if component.contains(u) {
                    report.push_str(&format!("  {} -> {} ({path})\n", krate.files[v].path, krate.files[*u].path));
                }
            }
        }
    }
    assert!(found.is_empty(), "files import each other in a circle:\n{report}");
}

#[test]
fn only_io_names_a_backend() {
    let mut offenders = Vec::new();
    for file in library() {
        if file.path.starts_with("src/io/") {
            continue;
        }
        for (n, line) in strip(&file.code).lines().enumerate() {
            if ["syscalls::", "uring::", "OsSocket"].iter().any(|name| line.contains(name)) {
                offenders.push(format!("{}:{}: {}", file.path, n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "backends named outside src/io:\n{}", offenders.join("\n"));
}

#[test]
fn no_file_is_over_600_lines_before_its_tests() {
    let long: Vec<String> = library()
        .iter()
        .map(|f| (f.path.clone(), f.code.lines().count()))
        .filter(|(_, n)| *n > MAX_LINES_BEFORE_TESTS)
        .map(|(p, n)| format!("{p}: {n} lines"))
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES_BEFORE_TESTS} lines before the tests:\n{}", long.join("\n"));
}

/// The checker itself: a circle is found, braces expand, re-exports lead to their origin.
#[test]
fn the_checker_sees_what_it_should() {
    assert_eq!(expand("a::{b, c::{d, e as f}, self}"), ["a::b", "a::c::d", "a::c::e", "a"]);
    assert_eq!(expand("a::{Base, Alias as B, c::{d as e}}"), ["a::Base", "a::Alias", "a::c::d"]);
    assert_eq!(expand("crate::io::Basis as Other"), ["crate::io::Basis"]);
    let mut edges = vec![BTreeMap::new(); 3];
    edges[0].insert(1, String::new());
    edges[1].insert(2, String::new());
    assert!(circles(&edges).is_empty());
    edges[2].insert(0, String::new());
    assert_eq!(circles(&edges).len(), 1);
    assert_eq!(before_tests("a\n#[cfg(test)]\nmod tests {\n}\n"), "a\n");
    let krate = Crate::load();
    let io = krate.by_module[&vec!["io".to_string()]];
    let batch = krate.by_module[&vec!["io".to_string(), "batch".to_string()]];
    let buf = krate.absolute(io, "crate::io::Buf").unwrap();
    assert_eq!(krate.origin(&buf, 0), Some(batch), "io::Buf is batch.rs's, re-exported");
}
