//! Architecture rules read from the source tree (nothing is spawned; this runs in milliseconds):
//!
//! - within each workspace crate, the top-level modules under `src/` form no cycle;
//! - the control plane and the proxy never depend on each other, directly or through other
//!   workspace crates;
//! - `llmhub-providers` (when present) stays IO-free: none of [`IO_CRATES`] among its
//!   dependencies or those of the workspace crates it depends on.
//!
//! Crates are discovered from the root `Cargo.toml`, so new members are checked without an edit
//! here. The readers are deliberately small: a module refers to another when one of its files
//! names `crate::other` (in a `use`, a brace group, or an inline path) or, from a file directly
//! in `src/`, `super::other`; lines that are `//` comments are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The two planes, which must never depend on each other.
const PLANES: [&str; 2] = ["llmhub-control", "llmhub-proxy"];
/// The shared vocabulary crate, which must stay IO-free.
const PROVIDERS: &str = "llmhub-providers";
/// Crates that do IO.
const IO_CRATES: &[&str] = &[
    "tokio", "reqwest", "hyper", "tonic", "sea-orm", "redis", "axum",
];

/// Module name → the modules it refers to.
type Graph = BTreeMap<String, BTreeSet<String>>;

// ---- modules ----

/// The top-level module a file belongs to, from its path relative to `src/`: the first path
/// component without `.rs`. `None` for the crate roots (`lib.rs`, `main.rs`) and for `bin/`
/// (each file there is a crate root of its own).
fn module_of(rel: &Path) -> Option<String> {
    let mut parts = rel.components();
    let first = parts.next()?.as_os_str().to_str()?;
    let is_file = parts.next().is_none();
    if is_file {
        let name = first.strip_suffix(".rs")?;
        (name != "lib" && name != "main").then(|| name.to_owned())
    } else {
        (first != "bin").then(|| first.to_owned())
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first path segment of each element of the brace group that `s` starts in (just after
/// its `{`): `a, b::c, d::{e, f}` → a, b, d.
fn brace_group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut at_element_start = true;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_element_start = true,
            c if depth == 0 && at_element_start && is_ident_char(c) => {
                let end = s[i..]
                    .find(|c: char| !is_ident_char(c))
                    .map_or(s.len(), |n| i + n);
                heads.push(s[i..end].to_owned());
                at_element_start = false;
                while chars.peek().is_some_and(|&(j, _)| j < end) {
                    chars.next();
                }
            }
            c if c.is_whitespace() => {}
            _ if depth == 0 => at_element_start = false,
            _ => {}
        }
    }
    heads
}

/// The names `prefix` (`crate::` or `super::`) is followed by anywhere in `text`.
fn names_after(text: &str, prefix: &str, out: &mut BTreeSet<String>) {
    let mut from = 0;
    while let Some(pos) = text[from..].find(prefix) {
        let at = from + pos;
        from = at + prefix.len();
        // `mycrate::x` is not `crate::x`; `$crate::x` is.
        if text[..at].chars().next_back().is_some_and(is_ident_char) {
            continue;
        }
        let rest = text[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(brace_group_heads(group));
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident_char(c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
}

/// The top-level names a source file refers to: after `crate::`, and after `super::` when the
/// file sits directly in `src/` (there `super` is the crate root).
fn referenced_names(source: &str, directly_in_src: bool) -> BTreeSet<String> {
    let text: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    names_after(&text, "crate::", &mut out);
    if directly_in_src {
        names_after(&text, "super::", &mut out);
    }
    out
}

/// The module graph of one crate from its source files (paths relative to `src/`).
fn module_graph(files: &[(PathBuf, String)]) -> Graph {
    let mut graph: Graph = files
        .iter()
        .filter_map(|(p, _)| module_of(p))
        .map(|m| (m, BTreeSet::new()))
        .collect();
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (path, source) in files {
        let Some(from) = module_of(path) else {
            continue;
        };
        let directly_in_src = path.components().count() == 1;
        let refs = referenced_names(source, directly_in_src);
        let edges = graph.get_mut(&from).unwrap();
        for to in refs {
            if to != from && modules.contains(&to) {
                edges.insert(to);
            }
        }
    }
    graph
}

/// Strongly connected components of more than one node, each sorted, in order of their first
/// member (Tarjan's algorithm).
fn tangles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    scc.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out.sort();
    t.out
}

/// The longest simple cycle from `scc[0]` back to itself inside the component (components are
/// small; the search is bounded anyway), e.g. `[a, b, c, a]`.
fn cycle_through(graph: &Graph, scc: &[String]) -> Vec<String> {
    fn dfs(
        graph: &Graph,
        scc: &BTreeSet<&str>,
        path: &mut Vec<String>,
        best: &mut Vec<String>,
        budget: &mut u32,
    ) {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let here = path.last().unwrap().clone();
        for next in graph.get(&here).into_iter().flatten() {
            if next == &path[0] {
                if path.len() + 1 > best.len() {
                    *best = path.clone();
                    best.push(next.clone());
                }
            } else if scc.contains(next.as_str()) && !path.contains(next) {
                path.push(next.clone());
                dfs(graph, scc, path, best, budget);
                path.pop();
            }
        }
    }
    let members: BTreeSet<&str> = scc.iter().map(String::as_str).collect();
    let mut best = Vec::new();
    dfs(
        graph,
        &members,
        &mut vec![scc[0].clone()],
        &mut best,
        &mut 100_000,
    );
    best
}

/// One line per cycle: `crate: a -> b -> c -> a`, plus the other members of the tangle when the
/// cycle does not pass through all of them.
fn cycle_problems(krate: &str, graph: &Graph) -> Vec<String> {
    tangles(graph)
        .iter()
        .map(|scc| {
            let cycle = cycle_through(graph, scc);
            let mut line = format!("{krate}: {}", cycle.join(" -> "));
            if cycle.len() <= scc.len() {
                line.push_str(&format!(" (modules in the cycle: {})", scc.join(", ")));
            }
            line
        })
        .collect()
}

// ---- manifests ----

/// What the checks need of a crate's `Cargo.toml`.
#[derive(Debug, Default, PartialEq)]
struct Manifest {
    name: String,
    /// Package names of the normal dependencies (`[dependencies]` and target-specific ones;
    /// not dev- or build-dependencies).
    deps: BTreeSet<String>,
}

/// `line` without its `# comment` (a `#` inside a string stays).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Strips quotes and whitespace from a TOML key or string.
fn unquote(s: &str) -> &str {
    s.trim().trim_matches('"').trim_matches('\'')
}

/// The string value of `key = "value"` inside an inline table such as
/// `{ path = "x", package = "y" }`.
fn inline_value<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    let inner = table.trim().strip_prefix('{')?.strip_suffix('}')?;
    inner.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (unquote(k) == key).then(|| unquote(v))
    })
}

/// Reads a manifest's package name and normal dependencies. `renames` maps a workspace
/// dependency key to its package name where `[workspace.dependencies]` renames it.
fn parse_manifest(text: &str, renames: &BTreeMap<String, String>) -> Manifest {
    let mut m = Manifest::default();
    let mut section = String::new();
    // `[dependencies.foo]`: the dependency key, until the next header.
    let mut table_dep: Option<String> = None;
    let is_deps =
        |s: &str| s == "dependencies" || (s.starts_with("target.") && s.ends_with(".dependencies"));
    let package_of = |key: &str, value: Option<&str>| -> String {
        value
            .and_then(|v| inline_value(v, "package"))
            .map(str::to_owned)
            .or_else(|| renames.get(key).cloned())
            .unwrap_or_else(|| key.to_owned())
    };
    for line in text.lines() {
        let line = strip_comment(line).trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            if let Some(dep) = table_dep.take() {
                m.deps.insert(package_of(&dep, None));
            }
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned();
            if let Some(dep) = section.strip_prefix("dependencies.") {
                table_dep = Some(unquote(dep).to_owned());
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = unquote(key);
        if section == "package" && key == "name" {
            m.name = unquote(value).to_owned();
        } else if is_deps(&section) {
            // `foo = …`, `foo.workspace = true`, `"foo" = { … }`
            let Some(dep) = key.split('.').next().filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            }) else {
                continue;
            };
            m.deps.insert(package_of(dep, Some(value)));
        } else if table_dep.is_some() && key == "package" {
            table_dep = Some(unquote(value).to_owned());
        }
    }
    if let Some(dep) = table_dep {
        m.deps.insert(package_of(&dep, None));
    }
    m
}

/// The root manifest's `[workspace] members` (a `dir/*` entry names every subdirectory with a
/// `Cargo.toml`) and the renames among `[workspace.dependencies]`.
fn parse_workspace(text: &str, root: &Path) -> (Vec<PathBuf>, BTreeMap<String, String>) {
    let mut members = Vec::new();
    let mut renames = BTreeMap::new();
    let mut section = "";
    let mut in_members = false;
    for line in text.lines() {
        let t = strip_comment(line).trim();
        if t.starts_with('[') && !in_members {
            section = t;
            continue;
        }
        if section == "[workspace]" && (in_members || t.starts_with("members")) {
            let list = if in_members {
                t
            } else {
                t.split_once('=').map_or("", |(_, v)| v)
            };
            in_members = !list.contains(']');
            for entry in list.split(',') {
                let e = unquote(entry.trim().trim_matches(|c| c == '[' || c == ']'));
                if e.is_empty() {
                    continue;
                }
                match e.strip_suffix("/*") {
                    Some(dir) => {
                        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
                            .into_iter()
                            .flatten()
                            .flatten()
                            .map(|d| d.path())
                            .filter(|p| p.join("Cargo.toml").exists())
                            .collect();
                        found.sort();
                        members.extend(found);
                    }
                    None => members.push(root.join(e)),
                }
            }
        } else if section == "[workspace.dependencies]"
            && let Some((key, value)) = t.split_once('=')
            && let Some(package) = inline_value(value, "package")
        {
            renames.insert(unquote(key).to_owned(), package.to_owned());
        }
    }
    (members, renames)
}

/// Dependency rules over the workspace crates' normal dependencies (`crate name → package
/// names`): the planes never reach each other, the providers crate reaches no IO crate.
fn dependency_problems(deps: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    // The shortest path from `from` to every crate reachable through workspace crates.
    let paths_from = |from: &str| -> BTreeMap<String, Vec<String>> {
        let mut paths = BTreeMap::from([(from.to_owned(), vec![from.to_owned()])]);
        let mut queue = std::collections::VecDeque::from([from.to_owned()]);
        while let Some(c) = queue.pop_front() {
            let path = paths[&c].clone();
            for d in deps.get(&c).into_iter().flatten() {
                if paths.contains_key(d) {
                    continue;
                }
                let mut p = path.clone();
                p.push(d.clone());
                paths.insert(d.clone(), p);
                // Only workspace crates are followed further.
                if deps.contains_key(d) {
                    queue.push_back(d.clone());
                }
            }
        }
        paths
    };
    let mut problems = Vec::new();
    for (a, b) in [(PLANES[0], PLANES[1]), (PLANES[1], PLANES[0])] {
        if !deps.contains_key(a) {
            continue;
        }
        if let Some(path) = paths_from(a).get(b) {
            problems.push(format!(
                "{a} depends on {b}: {} (the planes share only IO-free crates)",
                path.join(" -> ")
            ));
        }
    }
    if deps.contains_key(PROVIDERS) {
        let reach = paths_from(PROVIDERS);
        for io in IO_CRATES {
            if let Some(path) = reach.get(*io) {
                problems.push(format!(
                    "{PROVIDERS} depends on {io}: {} (it must stay IO-free)",
                    path.join(" -> ")
                ));
            }
        }
    }
    problems
}

// ---- the workspace on disk ----

/// The directory of the `Cargo.toml` with a `[workspace]` table above this crate.
fn workspace_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let manifest = dir.join("Cargo.toml");
        if std::fs::read_to_string(&manifest).is_ok_and(|t| t.contains("[workspace]")) {
            return dir;
        }
        assert!(dir.pop(), "no workspace Cargo.toml above this crate");
    }
}

/// Every `.rs` file under `dir`, with its path relative to `base`.
fn rust_files(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(base, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let source = std::fs::read_to_string(&path).unwrap();
            out.push((path.strip_prefix(base).unwrap().to_path_buf(), source));
        }
    }
}

struct Crate {
    manifest: Manifest,
    graph: Graph,
}

fn read_workspace(root: &Path) -> Vec<Crate> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let (members, renames) = parse_workspace(&text, root);
    members
        .iter()
        .map(|dir| {
            let text = std::fs::read_to_string(dir.join("Cargo.toml"))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let manifest = parse_manifest(&text, &renames);
            let src = dir.join("src");
            let mut files = Vec::new();
            if src.is_dir() {
                rust_files(&src, &src, &mut files);
            }
            Crate {
                manifest,
                graph: module_graph(&files),
            }
        })
        .collect()
}

/// Every rule over the whole workspace, one line per problem.
fn workspace_problems(crates: &[Crate]) -> Vec<String> {
    let mut problems: Vec<String> = crates
        .iter()
        .flat_map(|c| cycle_problems(&c.manifest.name, &c.graph))
        .collect();
    let deps = crates
        .iter()
        .map(|c| (c.manifest.name.clone(), c.manifest.deps.clone()))
        .collect();
    problems.extend(dependency_problems(&deps));
    problems
}

#[test]
fn workspace_has_no_cycles_or_cross_plane_deps() {
    let problems = workspace_problems(&read_workspace(&workspace_root()));
    assert!(
        problems.is_empty(),
        "architecture rules broken:\n  {}",
        problems.join("\n  ")
    );
}

/// The readers find what the real check relies on, so it cannot pass by reading nothing.
#[test]
fn workspace_reader_sees_the_crates_and_their_modules() {
    let crates = read_workspace(&workspace_root());
    let find = |name: &str| {
        crates
            .iter()
            .find(|c| c.manifest.name == name)
            .unwrap_or_else(|| panic!("{name} not among the workspace members"))
    };
    for name in PLANES {
        let c = find(name);
        assert!(c.graph.len() >= 5, "{name}: {:?}", c.graph.keys());
        assert!(
            c.graph.values().any(|e| !e.is_empty()),
            "{name}: no module refers to another"
        );
        assert!(c.manifest.deps.contains("llmhub-proto"), "{name}");
    }
    assert!(find("llmhub-control").graph.contains_key("store"));
    assert!(find("llmhub-e2e").manifest.deps.contains("tokio"));
}

// ---- the checkers on small inputs ----

fn graph(edges: &[(&str, &str)]) -> Graph {
    let mut g = Graph::new();
    for (a, b) in edges {
        g.entry((*a).to_owned())
            .or_default()
            .insert((*b).to_owned());
        g.entry((*b).to_owned()).or_default();
    }
    g
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn module_of_takes_the_first_component_under_src() {
    for (path, expected) in [
        ("api/keys.rs", Some("api")),
        ("api/mod.rs", Some("api")),
        ("server.rs", Some("server")),
        ("translate/anthropic/stream.rs", Some("translate")),
        ("lib.rs", None),
        ("main.rs", None),
        ("bin/mock_provider.rs", None),
    ] {
        assert_eq!(module_of(Path::new(path)).as_deref(), expected, "{path}");
    }
}

#[test]
fn references_are_read_from_uses_groups_and_inline_paths() {
    let source = r#"
use crate::config::Config;
use crate::{error::ProxyError, health, snapshot::{Snapshot, plan}};
use crate::{
    classify::{self, Class},
    providers,
};
// use crate::commented::Out;
fn f() -> crate::control::Link { $crate::macros::m!(); mycrate::other::g(); super::root_sibling::h() }
pub(crate) fn visible() {}
"#;
    assert_eq!(
        referenced_names(source, false),
        set(&[
            "classify",
            "config",
            "control",
            "error",
            "health",
            "macros",
            "providers",
            "snapshot"
        ])
    );
    // From a file directly in `src/`, `super::` is the crate root too.
    assert!(referenced_names(source, true).contains("root_sibling"));
    assert_eq!(
        brace_group_heads("a, b::c, d::{e, f}, self } rest"),
        ["a", "b", "d", "self"]
    );
}

#[test]
fn module_graph_keeps_edges_between_modules_only() {
    let files = vec![
        (PathBuf::from("lib.rs"), "use crate::api::x;".to_owned()),
        (
            PathBuf::from("api/mod.rs"),
            "use crate::store::Store; use crate::App;".to_owned(),
        ),
        (
            PathBuf::from("api/keys.rs"),
            "use crate::api::y; use crate::auth::z;".to_owned(),
        ),
        (
            PathBuf::from("store/mod.rs"),
            "use super::api::nope;".to_owned(),
        ),
        (PathBuf::from("auth.rs"), "use super::store::s;".to_owned()),
    ];
    assert_eq!(
        module_graph(&files),
        graph(&[("api", "store"), ("api", "auth"), ("auth", "store")])
    );
}

#[test]
fn cycle_finder_names_every_cycle() {
    let dag = graph(&[("a", "b"), ("b", "c"), ("a", "c")]);
    assert!(cycle_problems("k", &dag).is_empty());
    let g = graph(&[
        ("server", "openai"),
        ("openai", "error"),
        ("error", "server"),
        ("health", "snapshot"),
        ("snapshot", "health"),
        ("config", "error"),
    ]);
    assert_eq!(
        cycle_problems("llmhub-proxy", &g),
        [
            "llmhub-proxy: error -> server -> openai -> error",
            "llmhub-proxy: health -> snapshot -> health",
        ]
    );
    // A tangle the longest cycle does not cover names all its members.
    let g = graph(&[("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")]);
    assert_eq!(
        cycle_problems("k", &g),
        ["k: a -> b -> a (modules in the cycle: a, b, c)"]
    );
}

#[test]
fn manifests_yield_normal_dependencies_by_package_name() {
    let text = r#"
[package]
name = "llmhub-thing"
version.workspace = true

[dependencies]
llmhub-proto.workspace = true
tokio = { workspace = true }
serde = { version = "1", features = ["derive"] }
"quoted" = "1"
renamed = { package = "real-name", version = "1" }
inherited-rename.workspace = true

[dependencies.tabled]
version = "1"

[dependencies.tabled-renamed]
package = "real-tabled"

[target.'cfg(unix)'.dependencies]
nix = "0.29"

[dev-dependencies]
tempfile = "3"

[build-dependencies]
protox = "0.10"
"#;
    let renames = BTreeMap::from([("inherited-rename".to_owned(), "the-real-one".to_owned())]);
    let m = parse_manifest(text, &renames);
    assert_eq!(m.name, "llmhub-thing");
    assert_eq!(
        m.deps,
        set(&[
            "llmhub-proto",
            "nix",
            "quoted",
            "real-name",
            "real-tabled",
            "serde",
            "tabled",
            "the-real-one",
            "tokio"
        ])
    );
}

#[test]
fn workspace_members_and_renames_are_read() {
    let text = r#"
[workspace]
resolver = "3"
members = [
    "proto",
    "proxy", # the data plane
]
default-members = ["control-plane"]

[workspace.dependencies]
llmhub-proto = { path = "proto" }
short = { package = "long-name", version = "1" }
"#;
    let root = Path::new("/ws");
    let (members, renames) = parse_workspace(text, root);
    assert_eq!(members, [root.join("proto"), root.join("proxy")]);
    assert_eq!(
        renames,
        BTreeMap::from([("short".to_owned(), "long-name".to_owned())])
    );
}

#[test]
fn dependency_checker_finds_plane_links_and_io_in_providers() {
    let deps = |edges: &[(&str, &[&str])]| -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(c, d)| ((*c).to_owned(), set(d)))
            .collect()
    };
    let clean = deps(&[
        (
            "llmhub-control",
            &["llmhub-providers", "llmhub-proto", "tokio"],
        ),
        (
            "llmhub-proxy",
            &["llmhub-providers", "llmhub-proto", "hyper"],
        ),
        ("llmhub-providers", &["serde", "thiserror"]),
        ("llmhub-proto", &["prost", "tonic"]),
    ]);
    assert!(dependency_problems(&clean).is_empty());

    let tangled = deps(&[
        ("llmhub-control", &["llmhub-glue"]),
        ("llmhub-glue", &["llmhub-proxy"]),
        ("llmhub-proxy", &["llmhub-control"]),
        ("llmhub-providers", &["serde", "llmhub-proto"]),
        ("llmhub-proto", &["prost", "tonic"]),
    ]);
    assert_eq!(
        dependency_problems(&tangled),
        [
            "llmhub-control depends on llmhub-proxy: llmhub-control -> llmhub-glue -> llmhub-proxy (the planes share only IO-free crates)",
            "llmhub-proxy depends on llmhub-control: llmhub-proxy -> llmhub-control (the planes share only IO-free crates)",
            "llmhub-providers depends on tonic: llmhub-providers -> llmhub-proto -> tonic (it must stay IO-free)",
        ]
    );
    // Only workspace crates are followed: an external crate's own dependencies are not known.
    let direct = deps(&[("llmhub-providers", &["tokio"])]);
    assert_eq!(dependency_problems(&direct).len(), 1);
}
