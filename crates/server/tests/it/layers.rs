//! The dependency rule of the server crate and the pool crate, checked on their source files:
//! the file-level import graph of each has no cycle, each server file imports only its own
//! layer or those below, protocols never import each other, `http/` never names gRPC, only
//! `server.rs` reaches the protocols' code, and the pool core reads no protocol section of its
//! config outside `config/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside a crate, `[]` for the crate root.
type ModPath = Vec<String>;

/// One source file: its module path and the text without comments and string literals.
struct SourceFile {
    path: PathBuf,
    module: ModPath,
    code: String,
    raw: String,
}

fn crate_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "lib.rs" | "main.rs" | "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// The text with comments, string and character literals blanked out (lengths kept), so that
/// only code is searched.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: &[u8]| {
        out.extend(from.iter().map(|c| if *c == b'\n' { b'\n' } else { b' ' }));
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|c| *c == b'\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"/*") {
            let end = rest
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 2);
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest.starts_with(b"r\"") || rest.starts_with(b"r#") || rest.starts_with(b"br\"") {
            // A raw string: r"...", r#"..."#, br"...".
            let start = rest.iter().position(|c| *c == b'r').expect("r") + 1;
            let hashes = rest[start..].iter().take_while(|c| **c == b'#').count();
            if rest.get(start + hashes) != Some(&b'"') {
                out.push(b[i]);
                i += 1;
                continue;
            }
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let body = start + hashes + 1;
            let end = rest[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| body + p + close.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(rest.len());
            blank(&mut out, &rest[..end]);
            i += end;
        } else if rest[0] == b'\'' {
            // A character literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let end = if rest.get(1) == Some(&b'\\') {
                rest[2..]
                    .iter()
                    .position(|c| *c == b'\'')
                    .map_or(rest.len(), |p| p + 3)
            } else if rest.len() > 2 && rest[2] == b'\'' {
                3
            } else {
                1
            };
            if end == 1 {
                out.push(b'\'');
            } else {
                blank(&mut out, &rest[..end]);
            }
            i += end;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("ASCII blanks keep UTF-8 intact")
}

fn read_crate(name: &str) -> Vec<SourceFile> {
    let src = crate_dir(name);
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    paths
        .into_iter()
        .map(|path| {
            let raw = std::fs::read_to_string(&path).expect("readable source");
            SourceFile {
                module: module_of(&src, &path),
                code: strip(&raw),
                raw,
                path,
            }
        })
        .collect()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Reads `a::b::{c, d::e}` at `i` (just after a `crate::` or `super::` prefix, given as `base`)
/// and returns every path it names.
fn paths_at(code: &[u8], mut i: usize, base: ModPath) -> Vec<ModPath> {
    let mut path = base;
    loop {
        while i < code.len() && code[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < code.len() && code[i] == b'{' {
            // A group: split at top-level commas and read each item.
            let mut depth = 0;
            let mut start = i + 1;
            let mut out = Vec::new();
            let mut j = i;
            while j < code.len() {
                match code[j] {
                    b'{' => depth += 1,
                    b'}' | b',' if depth == 1 => {
                        out.extend(paths_at(code, start, path.clone()));
                        start = j + 1;
                        if code[j] == b'}' {
                            return out;
                        }
                    }
                    b'}' => depth -= 1,
                    _ => {}
                }
                j += 1;
            }
            return out;
        }
        let start = i;
        while i < code.len() && is_ident(code[i]) {
            i += 1;
        }
        if start == i {
            return vec![path];
        }
        let seg = String::from_utf8_lossy(&code[start..i]).into_owned();
        match seg.as_str() {
            "self" => {}
            "super" => {
                path.pop();
            }
            _ => path.push(seg),
        }
        if code[i..].starts_with(b"::") {
            i += 2;
        } else {
            return vec![path];
        }
    }
}

/// The modules a file declares with `mod name;`: its own children, which its paths may name
/// without a prefix.
fn child_modules(code: &[u8]) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(p) = code[i..].windows(4).position(|w| w == b"mod ") {
        let at = i + p;
        let name_start = at + 4;
        let name_end = name_start
            + code[name_start..]
                .iter()
                .take_while(|c| is_ident(**c))
                .count();
        let starts_word = at == 0 || !is_ident(code[at - 1]);
        if starts_word && code.get(name_end) == Some(&b';') {
            out.insert(code[name_start..name_end].to_vec());
        }
        i = name_end.max(at + 1);
    }
    out
}

/// Every module path a file refers to through `crate::`, `super::`, `self::` or one of its own
/// child modules, resolved from the module (inline modules included) where it is written.
fn references(file: &SourceFile) -> Vec<ModPath> {
    let code = file.code.as_bytes();
    let children = child_modules(code);
    let mut refs = Vec::new();
    // Inline modules open at a brace depth: (name, depth inside).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < code.len() {
        let at_word = i == 0 || !is_ident(code[i - 1]);
        match code[i] {
            b'{' => depth += 1,
            b'}' => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        if at_word && code[i..].starts_with(b"mod ") {
            let name_start = i + 4;
            let name_end = name_start
                + code[name_start..]
                    .iter()
                    .take_while(|c| is_ident(**c))
                    .count();
            let after = code[name_end..]
                .iter()
                .position(|c| !c.is_ascii_whitespace())
                .map(|p| code[name_end + p]);
            if after == Some(b'{') {
                let name = String::from_utf8_lossy(&code[name_start..name_end]).into_owned();
                inline.push((name, depth + 1));
            }
        }
        let here = || {
            let mut m = file.module.clone();
            m.extend(inline.iter().map(|(n, _)| n.clone()));
            m
        };
        if at_word && code[i..].starts_with(b"crate::") {
            refs.extend(paths_at(code, i + 7, Vec::new()));
            i += 7;
            continue;
        }
        // A path is read whole at its first segment: `super::super::x`, `child::x`.
        let chained = i >= 2 && &code[i - 2..i] == b"::";
        if at_word && !chained {
            let word_end = i + code[i..].iter().take_while(|c| is_ident(**c)).count();
            let word = &code[i..word_end];
            let relative = word == b"super"
                || word == b"self"
                || (inline.is_empty() && children.contains(word));
            if relative && code[word_end..].starts_with(b"::") {
                refs.extend(paths_at(code, i, here()));
                i = word_end + 2;
                continue;
            }
        }
        i += 1;
    }
    refs
}

/// The file-level graph: which files each file imports from.
fn graph(files: &[SourceFile]) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules: BTreeSet<ModPath> = files.iter().map(|f| f.module.clone()).collect();
    let mut g = BTreeMap::new();
    for f in files {
        let targets: &mut BTreeSet<ModPath> = g.entry(f.module.clone()).or_default();
        for mut r in references(f) {
            // The file a path lands in: its longest prefix that is a file's module.
            while !modules.contains(&r) {
                r.pop();
            }
            if r != f.module {
                targets.insert(r);
            }
        }
    }
    g
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

fn find_cycle(g: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Option<Vec<ModPath>> {
    fn visit(
        n: &ModPath,
        g: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        state: &mut BTreeMap<ModPath, u8>,
        stack: &mut Vec<ModPath>,
    ) -> Option<Vec<ModPath>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == m).expect("on the stack");
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, g, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn assert_acyclic(name: &str, g: &BTreeMap<ModPath, BTreeSet<ModPath>>) {
    // `LAYERS_GRAPH=1 cargo test --test layers -- --nocapture` prints the graph.
    if std::env::var_os("LAYERS_GRAPH").is_some() {
        for (from, to) in g {
            let to: Vec<String> = to.iter().map(show).collect();
            println!("{name}: {} -> {}", show(from), to.join(", "));
        }
    }
    if let Some(cycle) = find_cycle(g) {
        let shown: Vec<String> = cycle.iter().map(show).collect();
        panic!("{name}: files import each other: {}", shown.join(" -> "));
    }
}

/// The server crate's layer of a module, lowest first.
fn layer(m: &ModPath) -> usize {
    match m.first().map(String::as_str) {
        Some("protocol") => 0,
        Some("transport") => 1,
        Some("http") => 2,
        Some("proto") => 3,
        Some("server") => 4,
        Some("config" | "admin" | "runtime") => 5,
        None => 6,
        Some(other) => panic!("module {other} has no layer: add it to the rule"),
    }
}

#[test]
fn the_server_crate_has_one_way_layers() {
    let files = read_crate("server");
    let g = graph(&files);
    assert_acyclic("crates/server/src", &g);
    let mut wrong = Vec::new();
    for (from, targets) in &g {
        for to in targets {
            if layer(to) > layer(from) {
                wrong.push(format!(
                    "{} (a lower layer) imports {}",
                    show(from),
                    show(to)
                ));
            }
            let protocol_of = |m: &ModPath| (m.first()? == "proto").then(|| m.get(1).cloned())?;
            if let (Some(a), Some(b)) = (protocol_of(from), protocol_of(to)) {
                if a != b {
                    wrong.push(format!("protocol {a} imports protocol {b} ({})", show(to)));
                }
            }
            let is_wire_code = matches!(
                protocol_of(to).as_deref(),
                Some("http1" | "http2" | "ws" | "grpc")
            );
            // The crate root re-exports the public gRPC types; it runs no protocol code.
            let dispatches = from.is_empty() || from.as_slice() == ["server"];
            if is_wire_code && protocol_of(from).is_none() && !dispatches {
                wrong.push(format!(
                    "{} reaches {}: only server.rs dispatches to the protocols",
                    show(from),
                    show(to)
                ));
            }
        }
    }
    for f in &files {
        if f.module.first().is_some_and(|m| m == "http") && f.raw.to_lowercase().contains("grpc") {
            wrong.push(format!("{} names gRPC", f.path.display()));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_pool_core_has_no_import_cycle_and_no_protocol_rule() {
    let files = read_crate("pool");
    let g = graph(&files);
    assert_acyclic("crates/pool/src", &g);
    let mut wrong = Vec::new();
    for f in &files {
        if f.module.first().is_some_and(|m| m == "config") {
            continue;
        }
        for section in [".http1.", ".http2.", ".grpc.", ".websocket."] {
            if f.code.contains(section) {
                wrong.push(format!(
                    "{} reads the config's {section} section: a protocol rule belongs to the \
                     protocol's module in poolserve-server",
                    f.path.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_imports_and_cycles() {
    let file = |module: &[&str], text: &str| SourceFile {
        path: PathBuf::from(module.join("/")),
        module: module.iter().map(|s| s.to_string()).collect(),
        code: strip(text),
        raw: text.to_owned(),
    };
    let files = [
        file(
            &["a"],
            "use crate::b::{X, c::Y};\n// use crate::d;\nmod tests { use super::*; }",
        ),
        file(&["b"], "mod c;\nfn f() { let s = \"crate::a\"; c::g(); }"),
        file(&["b", "c"], "use super::super::a::Z;"),
        file(&["d"], "use self::e::F; mod e { pub struct F; }"),
    ];
    let g = graph(&files);
    let names = |m: &[&str]| -> BTreeSet<String> {
        g[&m.iter().map(|s| s.to_string()).collect::<Vec<_>>()]
            .iter()
            .map(show)
            .collect()
    };
    assert_eq!(names(&["a"]), BTreeSet::from(["b".into(), "b::c".into()]));
    assert_eq!(names(&["b"]), BTreeSet::from(["b::c".into()]));
    assert_eq!(names(&["b", "c"]), BTreeSet::from(["a".into()]));
    assert!(names(&["d"]).is_empty());
    assert!(find_cycle(&g).is_some());
}
