//! `/admin/pages/{bridge}/{page}`: a page a bridge adds to the admin pages (say, the Bitrix24
//! connector's message templates), behind the same sign-in, with one optional action button
//! posted with the session's CSRF token. The bridge hands plain text only; this page escapes
//! it, so a bridge cannot put markup from the outside world on an admin page.

use axum::{
    Form,
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use maud::html;

use super::{
    BridgePage, OpsState, PageView,
    layout::{self, Nav},
    session::{AdminSession, CSRF_FIELD},
};

/// The longest cell shown; longer text is cut with an ellipsis.
const MAX_CELL_CHARS: usize = 400;
/// The most rows shown.
const MAX_ROWS: usize = 500;

fn find<'a>(s: &'a OpsState, bridge: &str, page: &str) -> Option<&'a BridgePage> {
    s.bridges
        .iter()
        .filter(|b| b.name == bridge)
        .flat_map(|b| b.pages.iter())
        .find(|p| p.slug == page)
}

fn not_found() -> Response {
    layout::error_page(
        StatusCode::NOT_FOUND,
        "No such page",
        "No bridge has a page at this address.",
        html! { a href="/" { "Back to the overview" } },
    )
}

fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_CELL_CHARS {
        return text.to_string();
    }
    let mut t: String = text.chars().take(MAX_CELL_CHARS).collect();
    t.push('…');
    t
}

async fn render(
    p: &BridgePage,
    csrf: &str,
    path: &str,
    notice: Option<Result<String, String>>,
) -> Response {
    let view: PageView = match (p.load)().await {
        Ok(v) => v,
        Err(e) => return layout::internal(e),
    };
    let hidden = view.rows.len().saturating_sub(MAX_ROWS);
    let body = html! {
        h1 { (p.title) }
        @match &notice {
            Some(Ok(m)) => p.notice.ok role="status" { (cut(m)) },
            Some(Err(m)) => p.notice.bad role="alert" { (cut(m)) },
            None => {},
        }
        @for line in &view.intro { p { (cut(line)) } }
        @if let Some((label, _)) = &p.action {
            form method="post" action=(path) {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                button type="submit" { (label) }
            }
        }
        @if view.rows.is_empty() {
            p.muted { (view.empty) }
        } @else {
            table {
                thead { tr { @for c in &view.columns { th { (c) } } } }
                tbody {
                    @for row in view.rows.iter().take(MAX_ROWS) {
                        tr { @for cell in row { td { (cut(cell)) } } }
                    }
                }
            }
            @if hidden > 0 { p.muted { "…and " (hidden) " more" } }
        }
    };
    layout::ok(p.title, Nav::None, body)
}

pub(super) async fn show_page(
    State(s): State<OpsState>,
    admin: AdminSession,
    Path((bridge, page)): Path<(String, String)>,
) -> Response {
    let Some(p) = find(&s, &bridge, &page) else {
        return not_found();
    };
    render(
        p,
        admin.csrf(),
        &format!("/admin/pages/{bridge}/{page}"),
        None,
    )
    .await
}

/// The page's action button: runs it, then shows the page with what it did.
pub(super) async fn run_action(
    State(s): State<OpsState>,
    admin: AdminSession,
    Path((bridge, page)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(refused) = admin.verify_csrf(&fields) {
        return refused;
    }
    let Some(p) = find(&s, &bridge, &page) else {
        return not_found();
    };
    let Some((label, action)) = &p.action else {
        return not_found();
    };
    let outcome = action().await;
    tracing::info!(
        bridge,
        page,
        action = label,
        ok = outcome.is_ok(),
        "admin page action"
    );
    render(
        p,
        admin.csrf(),
        &format!("/admin/pages/{bridge}/{page}"),
        Some(outcome),
    )
    .await
}
