//! No file imports from a file that imports it back, directly or through
//! others. Within each crate of the workspace, the files and the paths
//! between them (`use crate::…`, `super::…`, `crate::x::…` in code, a
//! crate root's `use x::…` of its own module; test code aside) make a
//! graph with no cycle. Two files that need each other are one concern
//! split in two, or hold a type or constant that belongs in a leaf of its
//! own.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

#[test]
fn no_file_imports_from_a_file_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in the workspace");
    let mut found = Vec::new();
    for member in members(root) {
        let src = root.join(&member).join("src");
        // tests/ holds only integration tests: no src, no files to link.
        if !src.is_dir() {
            continue;
        }
        let files = Crate::read(&src);
        for (set, cycle) in files.cycles() {
            let mut text = format!("{member}: {}", files.describe(&cycle));
            if set.len() > cycle.len() {
                let all: Vec<&str> = set.iter().map(String::as_str).collect();
                text.push_str(&format!("; {} reach each other", all.join(", ")));
            }
            found.push(text);
        }
    }
    assert!(
        found.is_empty(),
        "import cycles between files:\n{}",
        found.join("\n")
    );
}

/// The workspace's members, as the root `Cargo.toml` lists them.
fn members(root: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("read Cargo.toml");
    let manifest: toml::Table = toml::from_str(&manifest).expect("Cargo.toml is TOML");
    manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members is a list")
        .iter()
        .map(|m| m.as_str().expect("a member is a path").to_string())
        .collect()
}

/// A file as the graph needs it.
struct File {
    /// Its module path below the crate root; empty for `lib` and `main`.
    module: Vec<String>,
    /// The root of its tree: `lib`, or `main` for a binary's own modules.
    root: String,
    /// Its code, with comments, literals and test code taken out.
    tokens: Vec<String>,
    /// The names its `use`s bring in, to the paths they stand for.
    uses: BTreeMap<String, Vec<String>>,
}

/// One crate's files by name (`lib`, `main`, `error`, `seccomp/filter`)
/// and, for each, the files it imports from with the first path that does.
struct Crate {
    imports: BTreeMap<String, BTreeMap<String, String>>,
}

impl Crate {
    fn read(src: &Path) -> Crate {
        let mut sources = BTreeMap::new();
        for path in rust_files(src) {
            let name = path
                .strip_prefix(src)
                .expect("below src")
                .with_extension("")
                .to_string_lossy()
                .trim_end_matches("/mod")
                .to_string();
            let source = std::fs::read_to_string(&path).expect("read a source file");
            sources.insert(name, without_test_code(tokens(&strip(&source))));
        }
        let is_root = |name: &str| name == "lib" || name == "main";
        let declares = |parent: &str, child: &str| {
            sources.get(parent).is_some_and(|tokens| {
                tokens
                    .windows(3)
                    .any(|w| w[0] == "mod" && w[1] == child && w[2] == ";")
            })
        };
        let mut files = BTreeMap::new();
        for (name, tokens) in &sources {
            let module: Vec<String> = if is_root(name) {
                Vec::new()
            } else {
                name.split('/').map(str::to_string).collect()
            };
            let root = if name == "main" || module.first().is_some_and(|top| declares("main", top))
            {
                "main"
            } else {
                "lib"
            };
            // A file no build but a test one declares is test code.
            let parent = match &module[..] {
                [] => None,
                [_] => Some(root.to_string()),
                [.., _] => Some(module[..module.len() - 1].join("/")),
            };
            let child = module.last().map(String::as_str).unwrap_or_default();
            if parent.is_some_and(|parent| !declares(&parent, child)) {
                continue;
            }
            let uses = use_paths(tokens)
                .into_iter()
                .filter(|(name, _)| name != "*")
                .collect();
            let file = File {
                module,
                root: root.to_string(),
                tokens: tokens.clone(),
                uses,
            };
            files.insert(name.clone(), file);
        }
        let imports = files
            .iter()
            .map(|(name, file)| {
                let mut targets = BTreeMap::new();
                for path in paths(file) {
                    if let Some(target) = resolve(&files, name, &path, 0)
                        && target != *name
                    {
                        targets.entry(target).or_insert_with(|| path.join("::"));
                    }
                }
                (name.clone(), targets)
            })
            .collect();
        Crate { imports }
    }

    /// Each set of files that reach each other, with a shortest cycle
    /// through it.
    fn cycles(&self) -> Vec<(BTreeSet<String>, Vec<String>)> {
        strongly_connected(&self.imports)
            .into_iter()
            .filter(|set| set.len() > 1)
            .map(|set| {
                let cycle = self.shortest_cycle(&set);
                (set, cycle)
            })
            .collect()
    }

    /// A breadth-first walk from the set's first file back to it.
    fn shortest_cycle(&self, set: &BTreeSet<String>) -> Vec<String> {
        let start = set.first().expect("a set has files");
        let mut previous: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(at) = queue.pop_front() {
            for next in self.imports[at].keys().filter(|n| set.contains(*n)) {
                if next == start {
                    let mut cycle = vec![at.clone()];
                    let mut step = at;
                    while let Some(&before) = previous.get(step) {
                        cycle.push(before.clone());
                        step = before;
                    }
                    cycle.reverse();
                    return cycle;
                }
                if !previous.contains_key(next) {
                    previous.insert(next, at);
                    queue.push_back(next);
                }
            }
        }
        unreachable!("files that reach each other make a cycle")
    }

    /// `a → b (crate::b::X) → a (crate::a::Y)`: each step with the path
    /// that makes it.
    fn describe(&self, cycle: &[String]) -> String {
        let mut text = cycle[0].clone();
        for (i, from) in cycle.iter().enumerate() {
            let to = &cycle[(i + 1) % cycle.len()];
            text.push_str(&format!(" → {to} ({})", self.imports[from][to]));
        }
        text
    }
}

/// The `.rs` files below `src`, but for `src/bin`, whose files are crates
/// of their own.
fn rust_files(src: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a source dir") {
            let path = entry.expect("a dir entry").path();
            if path.is_dir() {
                if path != src.join("bin") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }
    found
}

/// `source` without comments, and with every string and character literal
/// emptied, so neither can pass for code.
fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let after_ident = i > 0 && ident(chars[i - 1]);
        // `br"…"` is raw too.
        let raw_may_start =
            !after_ident || (chars[i - 1] == 'b' && (i < 2 || !ident(chars[i - 2])));
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            let mut depth = 0;
            loop {
                if chars[i..].starts_with(&['/', '*']) {
                    depth += 1;
                    i += 2;
                } else if chars[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if rest[0] == 'r'
            && raw_may_start
            && rest[1..]
                .iter()
                .position(|&c| c != '#')
                .is_some_and(|n| rest[1 + n] == '"')
        {
            let hashes = rest[1..].iter().take_while(|&&c| c == '#').count();
            let mut end = vec!['"'];
            end.extend(std::iter::repeat_n('#', hashes));
            i += 2 + hashes;
            while !chars[i..].starts_with(&end) {
                i += 1;
            }
            i += end.len();
            out.push_str("\"\"");
        } else if rest[0] == '"' {
            i += 1;
            while chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if rest[0] == '\'' && rest.get(1) == Some(&'\\') {
            i += 3;
            while chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if rest[0] == '\'' && rest.get(2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

/// Words, `::`, and every other character but blanks, one a token.
fn tokens(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if ident(chars[i]) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if chars[i..].starts_with(&[':', ':']) {
            tokens.push("::".to_string());
            i += 2;
        } else {
            if !chars[i].is_whitespace() {
                tokens.push(chars[i].to_string());
            }
            i += 1;
        }
    }
    tokens
}

/// `tokens` without the items under `#[cfg(test)]` or `#[cfg(all(test, …))]`.
fn without_test_code(tokens: Vec<String>) -> Vec<String> {
    let is = |at: usize, want: &[&str]| {
        tokens.len() >= at + want.len() && want.iter().zip(&tokens[at..]).all(|(w, t)| w == t)
    };
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let test_only = is(i, &["#", "[", "cfg", "(", "test", ")", "]"])
            || is(i, &["#", "[", "cfg", "(", "all", "(", "test", ","]);
        if !test_only {
            kept.push(tokens[i].clone());
            i += 1;
            continue;
        }
        // The item ends at a `;` or at the `}` closing its body, whichever
        // comes first outside brackets; its own attributes come first.
        let mut depth = 0;
        while i < tokens.len() {
            let token = tokens[i].as_str();
            i += 1;
            match token {
                "(" | "[" | "{" => depth += 1,
                ")" | "]" => depth -= 1,
                "}" => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                ";" if depth == 0 => break,
                _ => {}
            }
        }
    }
    kept
}

/// Every `use` of `tokens`, expanded to (the name it brings in, its path).
fn use_paths(tokens: &[String]) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        // `use ::x` names an external crate.
        if token == "use" && tokens.get(i + 1).is_some_and(|t| t != "::") {
            use_tree(tokens, &mut (i + 1), &mut Vec::new(), &mut found);
        }
    }
    found
}

/// Expands the use tree at `at` below `prefix` into `found`.
fn use_tree(
    tokens: &[String],
    at: &mut usize,
    prefix: &mut Vec<String>,
    found: &mut Vec<(String, Vec<String>)>,
) {
    let depth = prefix.len();
    loop {
        let token = tokens[*at].as_str();
        *at += 1;
        match token {
            "{" => {
                while tokens[*at] != "}" {
                    use_tree(tokens, at, prefix, found);
                    if tokens[*at] == "," {
                        *at += 1;
                    }
                }
                *at += 1;
                break;
            }
            "::" => {}
            "*" => {
                found.push(("*".to_string(), prefix.clone()));
                break;
            }
            _ => {
                prefix.push(token.to_string());
                if tokens[*at] == "::" {
                    continue;
                }
                let mut path = prefix.clone();
                if path.last().is_some_and(|s| s == "self") {
                    path.pop();
                }
                let name = if tokens[*at] == "as" {
                    *at += 2;
                    tokens[*at - 1].clone()
                } else {
                    path.last().cloned().unwrap_or_default()
                };
                found.push((name, path));
                break;
            }
        }
    }
    prefix.truncate(depth);
}

/// The paths by which `file` may reach another: its `use`s, and paths in
/// its code that start at the crate root, a parent, itself or a child
/// module (`crate::x::f()`, `super::X`, `x::f()` in a crate root).
fn paths(file: &File) -> Vec<Vec<String>> {
    let mut found: Vec<Vec<String>> = use_paths(&file.tokens)
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    let tokens = &file.tokens;
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == "use" {
            while tokens[i] != ";" {
                i += 1;
            }
        }
        let starts_path = tokens.get(i + 1).is_some_and(|t| t == "::")
            && (i == 0 || tokens[i - 1] != "::")
            && tokens[i].chars().all(|c| c.is_alphanumeric() || c == '_');
        if !starts_path {
            i += 1;
            continue;
        }
        let mut path = vec![tokens[i].clone()];
        i += 1;
        while tokens.get(i).is_some_and(|t| t == "::")
            && tokens
                .get(i + 1)
                .is_some_and(|t| t.chars().all(|c| c.is_alphanumeric() || c == '_'))
        {
            path.push(tokens[i + 1].clone());
            i += 2;
        }
        found.push(path);
    }
    found
}

/// The file `path`, written in file `from`, leads to: the deepest module
/// it names, or, for a name that module brings in with `use`, where that
/// `use` leads. None for a path out of the crate.
fn resolve(
    files: &BTreeMap<String, File>,
    from: &str,
    path: &[String],
    hops: usize,
) -> Option<String> {
    let file = &files[from];
    let (mut absolute, rest): (Vec<String>, &[String]) = match path.first()?.as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (file.module.clone(), &path[1..]),
        "super" => {
            let up = path.iter().take_while(|s| *s == "super").count();
            let kept = file.module.len().saturating_sub(up);
            (file.module[..kept].to_vec(), &path[up..])
        }
        first => {
            let mut child = file.module.clone();
            child.push(first.to_string());
            if !files.contains_key(&child.join("/")) {
                return None;
            }
            (file.module.clone(), path)
        }
    };
    absolute.extend(rest.iter().filter(|s| *s != "*").cloned());
    let name_of = |module: &[String]| {
        if module.is_empty() {
            file.root.clone()
        } else {
            module.join("/")
        }
    };
    let deepest = (0..=absolute.len())
        .rev()
        .find(|&n| files.contains_key(&name_of(&absolute[..n])))?;
    let target = name_of(&absolute[..deepest]);
    let Some(item) = absolute.get(deepest) else {
        return Some(target);
    };
    // A name the module brings in from outside the crate is still taken
    // from it. Eight hops stop a loop no compiler would accept anyway.
    match files[&target].uses.get(item) {
        Some(from_use) if hops < 8 => resolve(files, &target, from_use, hops + 1).or(Some(target)),
        _ => Some(target),
    }
}

/// Tarjan's strongly connected components of the import graph.
fn strongly_connected(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<BTreeSet<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<BTreeSet<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph[v].keys() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut set = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    set.insert(w.to_string());
                    if w == v {
                        break;
                    }
                }
                self.found.push(set);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}
