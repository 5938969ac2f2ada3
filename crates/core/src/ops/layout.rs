//! The page shell every operator page shares: header navigation, the stylesheet, the security
//! headers, and the error pages (401 / 403 / 503) the admin gate answers with.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, PreEscaped, html};

pub(super) const STYLESHEET_PATH: &str = "/assets/switchboard.css";

const STYLESHEET: &str = include_str!("switchboard.css");

/// Which navigation entry is highlighted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Nav {
    Home,
    Docs,
    Setup,
    Credentials,
    Events,
    Jobs,
    None,
}

const NAV: &[(Nav, &str, &str)] = &[
    (Nav::Home, "/", "Overview"),
    (Nav::Docs, "/docs", "Docs"),
    (Nav::Setup, "/setup", "Setup"),
    (Nav::Credentials, "/admin/credentials", "Credentials"),
    (Nav::Events, "/admin/events", "Events"),
    (Nav::Jobs, "/admin/jobs", "Jobs"),
];

pub(super) fn page(title: &str, current: Nav, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Switchboard" }
                link rel="stylesheet" href=(STYLESHEET_PATH);
            }
            body {
                header.top {
                    a.brand href="/" { "Switchboard" }
                    nav {
                        @for (nav, href, label) in NAV {
                            @if *nav == current {
                                a.current href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                }
                main { (body) }
                footer { "Switchboard " (env!("CARGO_PKG_VERSION")) " · " a href="/health" { "/health" } " · " a href="/metrics" { "/metrics" } }
            }
        }
    }
}

/// An HTML response with the headers every page carries: no framing, no referrer (the first
/// admin visit has the token in its URL), no caching of admin data, same-origin forms only.
pub(super) fn html(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, markup).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(super) fn ok(title: &str, current: Nav, body: Markup) -> Response {
    html(StatusCode::OK, page(title, current, body))
}

/// A page that says what went wrong and what to do about it.
pub(super) fn error_page(status: StatusCode, title: &str, message: &str, hint: Markup) -> Response {
    html(
        status,
        page(
            title,
            Nav::None,
            html! {
                h1 { (title) }
                p.notice.bad { (message) }
                (hint)
            },
        ),
    )
}

/// 503 while `SWITCHBOARD_ADMIN_TOKEN` is unset (SPEC §1.1).
pub(super) fn admin_unconfigured() -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Admin pages are switched off",
        "SWITCHBOARD_ADMIN_TOKEN is not configured, so /setup and /admin/* are closed.",
        html! {
            p { "Set a long random " code { "SWITCHBOARD_ADMIN_TOKEN" } " in the environment (for example "
                code { "openssl rand -hex 32" } "), restart Switchboard, then open this page and sign in with it." }
        },
    )
}

/// 401 with a way in: a form that posts the token to `/admin/sign-in`, which sets the session
/// cookie and comes back to `path`. Posted, the token stays out of the address and out of the
/// access logs of any proxy in front.
pub(super) fn login_required(path: &str, message: &str) -> Response {
    error_page(
        StatusCode::UNAUTHORIZED,
        "Sign in",
        message,
        html! {
            form.card method="post" action="/admin/sign-in" {
                input type="hidden" name="next" value=(path);
                label for="token" { "Admin token (" code { "SWITCHBOARD_ADMIN_TOKEN" } ")" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Open" }
            }
        },
    )
}

pub(super) fn forbidden(message: &str) -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "Request refused",
        message,
        html! { p { "Reload the page and submit the form again." } },
    )
}

/// A 500 page that says nothing of the cause; the cause goes to the log through
/// [`crate::http::ErrorCause`], once, inside the request span.
pub(super) fn internal(cause: impl std::fmt::Display) -> Response {
    let mut resp = error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "internal error",
        html! { p { "The cause is in the server log under this request's id." } },
    );
    resp.extensions_mut()
        .insert(crate::http::ErrorCause(cause.to_string()));
    resp
}

pub(super) fn mark(ok: bool) -> Markup {
    if ok {
        html! { span.mark.ok title="ok" aria-label="ok" { "✓" } }
    } else {
        html! { span.mark.bad title="needs attention" aria-label="needs attention" { "✗" } }
    }
}

/// Unix milliseconds as `2026-11-25 13:10:04 UTC`.
pub(super) fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

pub(super) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLESHEET,
    )
        .into_response()
}

/// Markdown already rendered to HTML by `docs_page` from files in this repository.
pub(super) fn trusted_html(s: String) -> Markup {
    PreEscaped(s)
}
