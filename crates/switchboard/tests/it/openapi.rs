//! `/openapi.json` describes the product's JSON routes, all of them and only real ones: its
//! paths are compared with the route tables in the sources (a JSON route added without a
//! description fails here), every documented operation is answered by the running router
//! (not 404 or 405), and the document holds together as OpenAPI 3.1 (references resolve,
//! path parameters are declared, security names a defined scheme). `/docs/api` shows it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde_json::Value;
use switchboard::Workers;
use switchboard_core::testing::fresh_database_url;

use crate::support::{healthy, serve_in_process};

/// Routes that are not JSON APIs: pages for people (HTML forms behind the session cookie), the
/// stylesheet, the Bitrix24 install frame, re-hosted media files.
const NOT_JSON: &[&str] = &[
    "/",
    "/docs",
    "/docs/api",
    "/docs/{name}",
    "/assets/switchboard.css",
    "/setup",
    "/setup/{bridge}/{action}",
    "/admin",
    "/admin/sign-in",
    "/admin/credentials",
    "/admin/events",
    "/admin/events/replay",
    "/admin/events/{id}/payload",
    "/admin/jobs",
    "/admin/jobs/retry",
    "/admin/pages/{bridge}/{page}",
    "/bitrix/install",
    "/media/{id}",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every path a `.route(…)` call in the product's sources mounts: a string literal, or a
/// `const NAME: &str = "…"` of the same crate.
fn routed_paths() -> BTreeSet<String> {
    let mut files = Vec::new();
    let mut stack = vec![repo().join("crates")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let skip = ["tests", "target", "sandbox"]
                    .iter()
                    .any(|s| path.ends_with(s));
                if !skip {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let texts: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect();
    let constant = |crate_dir: &Path, name: &str| -> String {
        let decl = format!("const {name}: &str = \"");
        texts
            .iter()
            .filter(|(p, _)| p.starts_with(crate_dir))
            .find_map(|(_, t)| {
                let at = t.find(&decl)?;
                t[at + decl.len()..].split('"').next().map(str::to_string)
            })
            .unwrap_or_else(|| panic!("no `{decl}` in {}", crate_dir.display()))
    };
    let mut paths = BTreeSet::new();
    for (file, text) in &texts {
        let crate_dir = file
            .ancestors()
            .find(|a| a.join("Cargo.toml").exists())
            .unwrap();
        for (at, _) in text.match_indices(".route(") {
            let arg = text[at + ".route(".len()..].trim_start();
            let path = match arg.strip_prefix('"') {
                Some(rest) => rest.split('"').next().unwrap().to_string(),
                None => {
                    let ident: String = arg
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                        .collect();
                    constant(crate_dir, ident.rsplit("::").next().unwrap())
                }
            };
            paths.insert(path);
        }
    }
    paths
}

#[tokio::test]
async fn openapi_lists_every_json_route_and_only_routed_ones() {
    let (database_url, _keep) = fresh_database_url().await;
    let env = [
        ("DATABASE_URL".to_string(), database_url),
        (
            "SWITCHBOARD_ADMIN_TOKEN".to_string(),
            "openapi-admin".into(),
        ),
        (
            "SWITCHBOARD_WABRIDGES_TOKEN".to_string(),
            "openapi-hook".into(),
        ),
    ];
    let server = serve_in_process(&env, Workers::InProcess).await;
    healthy(&server).await;
    let http = reqwest::Client::new();
    let answer = http
        .get(format!("{}/openapi.json", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = answer.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();

    // Every route mounted is documented or a page; every documented path is mounted.
    let routed = routed_paths();
    assert!(routed.contains("/whatsapp-bridge") && routed.contains("/webhook/whatsapp"));
    for path in &routed {
        assert!(
            documented.contains(path) || NOT_JSON.contains(&path.as_str()),
            "{path} is routed but neither in /openapi.json nor a page: describe it with \
             #[utoipa::path] and list it in its crate's OpenApi"
        );
    }
    for path in &documented {
        assert!(
            routed.contains(path),
            "{path} is in /openapi.json but no route mounts it"
        );
        assert!(!NOT_JSON.contains(&path.as_str()), "{path}");
    }
    for must in [
        "/health",
        "/whatsapp-bridge",
        "/wabridges/hooks/{bridge}",
        "/api/events",
        "/api/jobs",
        "/api/wabridges/bridges",
        "/webhook/whatsapp",
        "/bitrix/events",
    ] {
        assert!(documented.contains(must), "{must} not documented");
    }

    // The document holds together.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for name in [
        "admin_token",
        "admin_token_query",
        "wabridges_token",
        "meta_signature",
    ] {
        assert!(schemes.contains_key(name), "no security scheme {name}");
    }
    for name in ["ErrorBody", "Health", "EventsPage", "JobsPage"] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
    let text = doc.to_string();
    for (at, _) in text.match_indices("\"$ref\":\"") {
        let target = text[at + 8..].split('"').next().unwrap();
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {target}"));
        assert!(schemas.contains_key(name), "{target} does not resolve");
    }
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            assert!(
                !op["responses"].as_object().unwrap().is_empty(),
                "{method} {path}: no responses"
            );
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap())
                        .collect()
                })
                .unwrap_or_default();
            let in_path: BTreeSet<&str> = path
                .split('{')
                .skip(1)
                .map(|s| s.split('}').next().unwrap())
                .collect();
            assert_eq!(declared, in_path, "{method} {path}: path parameters");
            for alternative in op["security"].as_array().into_iter().flatten() {
                for name in alternative.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(name), "{method} {path}: {name}");
                }
            }

            // The router answers it: without credentials a refusal, never "no such route".
            let url = format!("{}{}", server.base, path.replace("{", "x").replace("}", ""));
            let status = http
                .request(method.to_uppercase().parse().unwrap(), &url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap()
                .status();
            assert!(
                status != 404 && status != 405,
                "{method} {path} is documented but answered {status}"
            );
        }
    }
    assert!(operations >= 14, "{operations} operations");

    // The page shows every operation, the error body, and links the document.
    let page = http
        .get(format!("{}/docs/api", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for path in &documented {
        assert!(html.contains(path.as_str()), "{path} not on /docs/api");
    }
    assert!(html.contains("ErrorBody") && html.contains("href=\"/openapi.json\""));
    assert!(!html.contains("<script"), "/docs/api runs no script");
    server.stop().await.unwrap();
}

/// A JSON route's malformed query is answered in the product's error shape, not axum's text.
#[tokio::test]
async fn a_bad_query_on_a_json_route_is_a_json_400() {
    let (database_url, _keep) = fresh_database_url().await;
    let env = [
        ("DATABASE_URL".to_string(), database_url),
        (
            "SWITCHBOARD_ADMIN_TOKEN".to_string(),
            "openapi-admin".into(),
        ),
    ];
    let server = serve_in_process(&env, Workers::InProcess).await;
    healthy(&server).await;
    let answer = reqwest::Client::new()
        .get(format!(
            "{}/api/events?source=a&source=b&token=openapi-admin",
            server.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("source"), "{body}");
    server.stop().await.unwrap();
}
