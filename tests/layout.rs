//! The layout rule of docs/design.md, checked on every test run: no import
//! circles between the library's files. A file depends on another when it
//! names it by path (`crate::a::b`, `super::x`, `use` lines included);
//! `mod` declarations, a mod.rs naming its own submodules by bare name (its
//! dispatch) and each file's `#[cfg(test)]` part do not count.
//! `cargo test --test layout -- --nocapture` prints every file's
//! dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; lib.rs is the root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// Leading identifiers of a path (`a::b::C` -> [a, b, C]).
fn segments(s: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for part in s.split("::") {
        let name: String = part.trim().chars().take_while(|&c| ident(c)).collect();
        if name.is_empty() {
            break;
        }
        let whole = name.len() == part.trim().len();
        out.push(name);
        if !whole {
            break;
        }
    }
    out
}

/// Paths the code names: `crate::x::y` and `super::x`, and each item of a
/// `{...}` group after them (`crate::pg::{self, dump}` names pg and
/// pg::dump).
fn named_paths(code: &str, here: &[String], is_mod_file: bool) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (start, first) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        if start > 0 && code[..start].chars().last().is_some_and(ident) {
            continue;
        }
        let mut base: Vec<String> = if first == "crate::" {
            Vec::new()
        } else {
            // super of a mod.rs file is its parent folder's module.
            let mut p = here.to_vec();
            if !is_mod_file || !p.is_empty() {
                p.pop();
            }
            p
        };
        let rest = &code[start + first.len()..];
        let head: String = rest.chars().take_while(|&c| ident(c) || c == ':').collect();
        base.extend(segments(&head));
        let after = &rest[head.len()..];
        if head.ends_with("::") && after.starts_with('{') {
            // One group, split at its top-level commas.
            let (mut depth, mut item, mut items) = (0, String::new(), Vec::new());
            for c in after.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        if depth == 1 {
                            continue;
                        }
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            items.push(std::mem::take(&mut item));
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        items.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            for it in items {
                let mut p = base.clone();
                if it.trim() != "self" {
                    p.extend(segments(&it));
                }
                out.push(p);
            }
        } else {
            out.push(base);
        }
    }
    out
}

#[test]
fn no_import_circles_between_the_library_s_files() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut deps: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let is_mod_file = file.ends_with("mod.rs");
        let mut to = BTreeSet::new();
        for path in named_paths(code, module, is_mod_file) {
            // The longest prefix that is a file is the one depended on.
            let target = (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]));
            if let Some(t) = target {
                if t != file {
                    to.insert(t.clone());
                }
            }
        }
        deps.insert(file.clone(), to);
    }
    let name = |p: &Path| p.strip_prefix(&src).unwrap().display().to_string();
    for (f, to) in &deps {
        let to: Vec<String> = to.iter().map(|t| name(t)).collect();
        println!("{} -> {}", name(f), to.join(", "));
    }
    // Depth-first search; a back edge is a circle, printed file by file.
    fn visit(
        f: &PathBuf,
        deps: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
        circles: &mut Vec<Vec<PathBuf>>,
    ) {
        state.insert(f.clone(), 1);
        stack.push(f.clone());
        for t in deps.get(f).into_iter().flatten() {
            match state.get(t).copied().unwrap_or(0) {
                0 => visit(t, deps, state, stack, circles),
                1 => {
                    let at = stack.iter().position(|s| s == t).unwrap();
                    circles.push(stack[at..].to_vec());
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(f.clone(), 2);
    }
    let (mut state, mut circles) = (BTreeMap::new(), Vec::new());
    for f in deps.keys() {
        if !state.contains_key(f) {
            visit(f, &deps, &mut state, &mut Vec::new(), &mut circles);
        }
    }
    let shown: Vec<String> = circles
        .iter()
        .map(|c| {
            let mut names: Vec<String> = c.iter().map(|p| name(p)).collect();
            names.push(names[0].clone());
            names.join(" -> ")
        })
        .collect();
    assert!(
        circles.is_empty(),
        "import circles between files (break each by moving what both sides need below them):\n{}",
        shown.join("\n")
    );
    assert!(
        deps.len() > 20 && deps.values().map(|d| d.len()).sum::<usize>() > 50,
        "the scan read too little: {deps:?}"
    );
}
