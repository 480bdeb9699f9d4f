//! The crate's layering, as `src/lib.rs` documents it under `# Layout`: a module uses only
//! modules listed before it. Test code (`tests.rs` files and `#[cfg(test)] mod tests` blocks)
//! may reach any module.

use std::collections::BTreeSet;
use std::path::Path;

/// Top-level modules in the order the crate docs list them.
fn documented_order() -> Vec<String> {
    let lib = std::fs::read_to_string("src/lib.rs").expect("src/lib.rs");
    let layout = lib.split("# Layout").nth(1).expect("a # Layout section");
    layout
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("//!"))
        .filter_map(|l| l.strip_prefix("//! - [`"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// `crate::<module>` names used by non-test code in `path`.
fn uses(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).expect("source");
    let code = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        } else {
            out.insert(
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn no_module_uses_a_module_listed_after_it() {
    let order = documented_order();
    assert!(order.len() > 10, "layout list not found: {order:?}");
    let mut files = Vec::new();
    walk(Path::new("src"), &mut files);
    let mut undocumented = BTreeSet::new();
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix("src").expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_owned())
            .unwrap_or_default();
        if top == "lib" || top == "main" || file.file_name().is_some_and(|f| f == "tests.rs") {
            continue;
        }
        let Some(rank) = order.iter().position(|m| *m == top) else {
            undocumented.insert(top);
            continue;
        };
        for used in uses(&file) {
            match order.iter().position(|m| *m == used) {
                Some(r) if r > rank => violations.push(format!("{} uses {used}", file.display())),
                _ => {}
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "modules missing from # Layout: {undocumented:?}"
    );
    assert!(violations.is_empty(), "upward imports: {violations:#?}");
}
