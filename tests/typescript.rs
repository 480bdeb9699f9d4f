//! The browser client for TypeScript users: `src/web/client.d.ts` matches what `client.js`
//! exports, the README's React example type-checks against it (`tsc --noEmit`, TypeScript and
//! React's types from npm, installed by the test command into `target/ts-check`), a misuse does
//! not, and `src/web` packs for npm as it is, with no build step.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::TempDir;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn tsc() -> PathBuf {
    let tsc = root().join("target/ts-check/node_modules/.bin/tsc");
    assert!(
        tsc.exists(),
        "{} missing: run the README's test command (bash tests/run.sh), which installs it",
        tsc.display()
    );
    tsc
}

/// The README's React example, importing the client from the same directory.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let after = readme
        .split_once("becomes a ten-line wrapper:")
        .expect("the React example in the README")
        .1;
    let block = after
        .split_once("```jsx\n")
        .unwrap()
        .1
        .split_once("```")
        .unwrap()
        .0;
    assert!(block.contains("LicenseProvider") && block.contains("function Bell"));
    block.replace("\"/client.js\"", "\"./client.js\"")
}

/// Type-checks `files` (name, text) beside client.js and client.d.ts, strictly unless
/// `pasted_js`; tsc's output on failure.
fn type_check(files: &[(&str, String)], pasted_js: bool) -> Result<(), String> {
    let dir = TempDir::new("lgw-tsc");
    for name in ["client.js", "client.d.ts"] {
        std::fs::copy(root().join("src/web").join(name), dir.0.join(name)).unwrap();
    }
    for (name, text) in files {
        std::fs::write(dir.0.join(name), text).unwrap();
    }
    let types = root().join("target/ts-check/node_modules/@types");
    let config = serde_json::json!({
        "compilerOptions": {
            "target": "es2022", "module": "esnext", "moduleResolution": "bundler",
            "lib": ["es2022", "dom"], "noEmit": true, "strict": true,
            // JavaScript as users paste it: parameters without annotations, and a context
            // created with null.
            "strictNullChecks": !pasted_js, "noImplicitAny": !pasted_js,
            "allowJs": true, "checkJs": true, "jsx": "react", "allowUmdGlobalAccess": true,
            "typeRoots": [types], "types": ["react"], "skipLibCheck": false
        },
        "files": files.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
    });
    std::fs::write(dir.0.join("tsconfig.json"), config.to_string()).unwrap();
    let out = Command::new(tsc())
        .args(["--noEmit", "-p", "tsconfig.json"])
        .current_dir(&dir.0)
        .output()
        .expect("tsc runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn the_readme_react_example_type_checks_against_the_declarations() {
    let example = readme_example();
    if let Err(errors) = type_check(&[("example.jsx", example.clone())], true) {
        panic!("the README example does not type-check:\n{errors}");
    }
    // The check reaches into the components: a misspelt method in the bell is caught.
    let typo = example.replace("client.markRead(n.id)", "client.markRed(n.id)");
    assert_ne!(typo, example);
    assert!(type_check(&[("example.jsx", typo)], true).is_err());
}

/// Strict TypeScript over every part of the API, and misuses that must be refused (so the
/// check above can fail).
#[test]
fn the_declarations_type_every_call_and_refuse_misuse() {
    let good = r#"
import { connect, describe, mutedBy, STATES, type LicenseEvent } from "./client.js";
const client = connect({ url: "wss://gw.example.com/ws/license", transport: "auto",
                         getToken: async () => "jwt", refreshBefore: 30_000 });
client.on("state", (s) => s.toUpperCase());
client.on("transport", (t) => (t === "sse" ? 1 : 0));
client.on("usage_limit_warning", (e) => e.data.percent.toFixed(1));
client.on("module_deactivated", (e) => e.data.module.length);
client.on("*", (e: LicenseEvent) => describe(e));
client.on("unread", (n) => n + 1);
client.on("inbox", ({ items, nextBefore }) => items.filter((i) => !i.read).length + (nextBefore ?? "").length);
client.on("license", (view) => view && Object.values(view.modules).filter((m) => m.locked));
const off = client.on("notifications", (list) => list.map((n) => n.message));
off();
async function all(): Promise<number> {
  const page = await client.listNotifications({ limit: 20, unread: true, minSeverity: "warning" });
  const prefs = await client.setPreferences({ mutedTypes: ["module_activated"], modules: null });
  mutedBy(prefs, page.items[0]);
  await client.markRead(page.items[0].id);
  await client.markUnread(page.items[0].id);
  const view = await client.refetchLicense();
  return (await client.readAll()) + STATES.length + (view?.daysLeft ?? 0) + (client.lastClose?.code ?? 0);
}
all();
client.close();
"#;
    if let Err(errors) = type_check(&[("good.ts", good.into())], false) {
        panic!("strict use of the API does not type-check:\n{errors}");
    }
    for bad in [
        r#"import { connect } from "./client.js"; connect({ transport: "polling" });"#,
        r#"import { connect } from "./client.js"; connect().on("unread", (n) => n.toUpperCase());"#,
        r#"import { connect } from "./client.js"; connect().markRead(42);"#,
        r#"import { connect } from "./client.js"; connect().on("usage_limit_warning", (e) => e.data.module.length);"#,
    ] {
        assert!(
            type_check(&[("bad.ts", bad.into())], false).is_err(),
            "tsc accepted a misuse: {bad}"
        );
    }
}

/// What client.d.ts declares is what client.js exports: the exported names and the client's
/// public methods, read from the module itself by Node.
#[test]
fn the_declarations_match_the_module() {
    let dts = std::fs::read_to_string(root().join("src/web/client.d.ts")).unwrap();
    let mut declared: Vec<String> = dts
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("export ")?;
            let l = l
                .strip_prefix("function ")
                .or_else(|| l.strip_prefix("const "))
                .or_else(|| l.strip_prefix("class "))?;
            Some(l.split(['(', ':', ' ', '<']).next()?.to_owned())
        })
        .collect();
    declared.sort();
    declared.dedup();
    let class = dts.split_once("export class LicenseClient {").unwrap().1;
    let class = class.split_once("\n}").unwrap().0;
    let mut methods: Vec<String> = class
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("  ")?;
            let name = l.split(['(', '<']).next()?;
            (l.len() > name.len()
                && name.chars().all(|c| c.is_ascii_alphanumeric())
                && name != "constructor")
                .then(|| name.to_owned())
        })
        .collect();
    methods.sort();
    methods.dedup();

    let script = format!(
        "import('{}').then((m) => {{ \
           const proto = Object.getOwnPropertyNames(m.LicenseClient.prototype) \
             .filter((n) => n !== 'constructor' && !n.startsWith('_')).sort(); \
           console.log(JSON.stringify({{ exports: Object.keys(m).sort(), methods: proto }})); }})",
        root().join("src/web/client.js").display()
    );
    let out = Command::new("node")
        .args(["--input-type=module", "-e", &script])
        .output()
        .expect("node runs (the README's test command installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&seen["exports"]), declared, "exported names");
    assert_eq!(
        names(&seen["methods"]),
        methods,
        "LicenseClient's public methods"
    );
}

#[test]
fn the_client_packs_for_npm_as_it_is() {
    let out = Command::new("npm")
        .args(["pack", "--dry-run", "--json"])
        .current_dir(root().join("src/web"))
        .output()
        .expect("npm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut files: Vec<&str> = packed[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["client.d.ts", "client.js", "package.json"]);
    assert_eq!(packed[0]["name"], "@license-gateway/client");
}
