//! `/docs`: the operator documentation from `docs/`, rendered from Markdown.
//!
//! The files are compiled into the binary rather than read from disk at run time: the binary
//! is deployed alone (container image, systemd unit) with no `docs/` beside it, and a page that
//! changes with the working directory would show different text to different operators. The
//! price is one line in [`DOCS`] per new file.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use maud::{Markup, html};
use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

use super::{
    OpsState,
    layout::{self, Nav},
};

/// (slug, Markdown). `README` is the index at `/docs`; the others are `/docs/{slug}`.
/// Add a file here when you add one to `docs/`.
const DOCS: &[(&str, &str)] = &[
    ("README", include_str!("../../../../docs/README.md")),
    ("platform", include_str!("../../../../docs/platform.md")),
    ("pbx-bridge", include_str!("../../../../docs/pbx-bridge.md")),
    (
        "wabridges-hooks",
        include_str!("../../../../docs/wabridges-hooks.md"),
    ),
    (
        "bitrix-connector",
        include_str!("../../../../docs/bitrix-connector.md"),
    ),
    ("templates", include_str!("../../../../docs/templates.md")),
    ("deploy", include_str!("../../../../docs/deploy.md")),
    (
        "reliability",
        include_str!("../../../../docs/reliability.md"),
    ),
];

pub(super) async fn show_docs_index(State(_): State<OpsState>) -> Response {
    render("README")
}

pub(super) async fn show_doc(State(_): State<OpsState>, Path(name): Path<String>) -> Response {
    let slug = name.strip_suffix(".md").unwrap_or(&name);
    if slug == "README" {
        return super::session::see_other("/docs");
    }
    render(slug)
}

fn render(slug: &str) -> Response {
    let Some((_, md)) = DOCS.iter().find(|(s, _)| *s == slug) else {
        return layout::error_page(
            StatusCode::NOT_FOUND,
            "No such page",
            "There is no documentation page by that name.",
            nav(""),
        );
    };
    let title = title_of(md);
    layout::ok(
        &title,
        Nav::Docs,
        html! {
            (nav(slug))
            article.doc.card { (layout::trusted_html(to_html(md))) }
        },
    )
}

pub(super) fn nav(current: &str) -> Markup {
    html! {
        nav.doc-nav aria-label="Documentation pages" {
            @for (slug, md) in DOCS {
                @let href = if *slug == "README" { "/docs".to_string() } else { format!("/docs/{slug}") };
                @if *slug == current { strong { (title_of(md)) } } @else { a href=(href) { (title_of(md)) } }
            }
            @if current == "api" { strong { "HTTP API" } } @else { a href="/docs/api" { "HTTP API" } }
        }
    }
}

fn title_of(md: &str) -> String {
    md.lines()
        .find_map(|l| l.strip_prefix("# "))
        .unwrap_or("Documentation")
        .trim()
        .to_string()
}

/// Markdown → HTML, with links between the docs (`platform.md#retries`) pointed at their pages.
fn to_html(md: &str) -> String {
    let opts =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_HEADING_ATTRIBUTES;
    let events = Parser::new_ext(md, opts).map(|e| match e {
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: doc_link(dest_url),
            title,
            id,
        }),
        other => other,
    });
    let mut out = String::with_capacity(md.len() * 2);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

fn doc_link(dest: CowStr<'_>) -> CowStr<'_> {
    if dest.contains("://") || dest.starts_with('/') || dest.starts_with('#') {
        return dest;
    }
    let (path, anchor) = dest.split_once('#').unwrap_or((&dest, ""));
    let Some(stem) = path.strip_suffix(".md") else {
        return dest;
    };
    let stem = stem.trim_start_matches("./");
    let page = if stem == "README" {
        "/docs".to_string()
    } else {
        format!("/docs/{stem}")
    };
    if anchor.is_empty() {
        CowStr::from(page)
    } else {
        CowStr::from(format!("{page}#{anchor}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_doc_renders_with_a_title_and_links_point_at_pages() {
        for (slug, md) in DOCS {
            assert_ne!(title_of(md), "Documentation", "{slug}.md has no `# ` title");
            assert!(to_html(md).contains("<h1>"), "{slug}");
        }
        let html = to_html("[p](platform.md) [r](./platform.md#retries) [x](https://e.x/a.md)");
        assert!(html.contains(r#"href="/docs/platform""#), "{html}");
        assert!(html.contains(r#"href="/docs/platform#retries""#), "{html}");
        assert!(html.contains(r#"href="https://e.x/a.md""#), "{html}");
    }
}
