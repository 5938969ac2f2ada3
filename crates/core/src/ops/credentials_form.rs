//! `/admin/credentials`: every setting the credential store holds, grouped in the catalogue's
//! form order (the binary sets it), each with where its value comes from now; settings only
//! the environment or config file can set are listed read-only.
//!
//! Secrets are never sent to the browser: a set secret shows the mask, and a blank field keeps
//! the value. Non-secret fields show their value, and an unchanged value is not copied into the
//! store (it would silently outrank the environment). "Clear" deletes the stored value, so the
//! environment / file / default applies again.

use std::collections::HashMap;

use axum::{
    Form,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use maud::{Markup, html};

use super::{
    OpsState,
    layout::{self, Nav},
    session::{self, AdminSession, CSRF_FIELD},
};
use crate::{
    config::{Kind, Setting, Source, check_kind},
    credentials::{CredentialError, SettingView},
    secret::MASK,
};

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct Notice {
    saved: Option<usize>,
}

/// What a re-rendered form shows after a refused save.
#[derive(Default)]
struct Feedback {
    /// Setting key → what is wrong with the entered value.
    errors: HashMap<&'static str, String>,
    /// Non-secret values as entered, so a typo is fixed rather than retyped.
    entered: HashMap<&'static str, String>,
    /// A problem with the whole save (no master key, database error).
    form_error: Option<String>,
    saved: Option<usize>,
}

pub(super) async fn show_credentials(
    State(s): State<OpsState>,
    admin: AdminSession,
    Query(notice): Query<Notice>,
) -> Response {
    let feedback = Feedback {
        saved: notice.saved,
        ..Feedback::default()
    };
    render(&s, &admin, feedback, StatusCode::OK).await
}

enum Change {
    Set(String),
    Clear,
}

pub(super) async fn save_credentials(
    State(s): State<OpsState>,
    admin: AdminSession,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    if let Err(refused) = admin.verify_csrf(&fields) {
        return refused;
    }
    let value_of = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim());
    let clear = |key: &str| fields.iter().any(|(k, v)| k == "clear" && v == key);

    let mut feedback = Feedback::default();
    let mut changes: Vec<(&'static Setting, Change)> = Vec::new();
    for setting in s.core.config.catalogue().iter().filter(|s| s.storable) {
        if clear(setting.key) {
            changes.push((setting, Change::Clear));
            continue;
        }
        let Some(value) = value_of(setting.key).filter(|v| !v.is_empty() && *v != MASK) else {
            continue;
        };
        let secret = setting.kind == Kind::Secret;
        if !secret {
            feedback.entered.insert(setting.key, value.to_string());
        }
        if let Err(problem) = validate(setting, value) {
            feedback.errors.insert(setting.key, problem);
            continue;
        }
        if !secret {
            match s.core.settings.get(setting).await {
                // The field shows a URL's password masked: sent back as shown, it is unchanged.
                Ok(Some(current))
                    if current == value || crate::db::redact_url(&current) == value =>
                {
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    feedback.form_error = Some(e.to_string());
                    continue;
                }
            }
        }
        changes.push((setting, Change::Set(value.to_string())));
    }
    if !feedback.errors.is_empty() || feedback.form_error.is_some() {
        return render(&s, &admin, feedback, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let needs_key = changes.iter().any(|(_, c)| matches!(c, Change::Set(_)));
    if needs_key && s.core.settings.keyring().current_id().is_none() {
        feedback.form_error = Some(CredentialError::NoMasterKey.to_string());
        return render(&s, &admin, feedback, StatusCode::UNPROCESSABLE_ENTITY).await;
    }
    let mut saved = Vec::new();
    for (setting, change) in &changes {
        let value = match change {
            Change::Set(v) => v.as_str(),
            Change::Clear => "",
        };
        if let Err(e) = s.core.settings.set(setting, value).await {
            feedback.form_error = Some(e.to_string());
            return render(&s, &admin, feedback, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
        saved.push(setting.key);
    }
    // Names only: the values never reach a log line.
    tracing::info!(settings = ?saved, "credentials saved from the admin form");
    session::see_other(&format!("/admin/credentials?saved={}", saved.len()))
}

fn validate(setting: &Setting, value: &str) -> Result<(), String> {
    if setting.kind == Kind::Secret && value.contains(char::is_whitespace) {
        return Err("contains spaces or line breaks: paste the value alone".to_string());
    }
    check_kind(setting, value)
}

async fn render(s: &OpsState, admin: &AdminSession, fb: Feedback, status: StatusCode) -> Response {
    let (views, load_error) = match s.core.settings.list().await {
        Ok(v) => (v, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let has_key = s.core.settings.keyring().current_id().is_some();
    let by_key: HashMap<&str, &SettingView> = views.iter().map(|v| (v.key, v)).collect();
    let catalogue = s.core.config.catalogue();
    let has_storable = |group: &str| catalogue.iter().any(|s| s.group == group && s.storable);
    let (form_groups, env_only_groups): (Vec<&str>, Vec<&str>) = catalogue
        .form_groups()
        .into_iter()
        .partition(|g| has_storable(g));
    let body = html! {
        h1 { "Credentials" }
        p.muted { "Resolution order: stored here (encrypted) → environment → config file → default. "
            "Secrets show " code { (MASK) } " once set; leave a field blank to keep its value." }
        @if let Some(n) = fb.saved {
            p.notice.ok role="status" { "Saved " (n) " setting(s)." }
        }
        @if let Some(e) = &load_error {
            p.notice.bad role="alert" { (e) }
        }
        @if !has_key {
            p.notice.bad { "SWITCHBOARD_MASTER_KEY is not set, so nothing can be saved here yet. Run "
                code { "switchboard keys generate" } ", set the variable and restart." }
        }
        @if load_error.is_none() {
            form method="post" action="/admin/credentials" novalidate {
                input type="hidden" name=(CSRF_FIELD) value=(admin.csrf());
                @if let Some(e) = &fb.form_error {
                    p.notice.bad #form-error role="alert" { (e) }
                }
                @for group in &form_groups {
                    fieldset {
                        legend { (group) }
                        @for setting in catalogue.iter().filter(|s| s.group == *group) {
                            @if let Some(v) = by_key.get(setting.key) { (field(setting, v, &fb)) }
                        }
                    }
                }
                p { button type="submit" { "Save" } }
            }
            h2 { "Set in the environment or config file" }
            @for group in &env_only_groups {
                fieldset {
                    legend { (group) }
                    @for setting in catalogue.iter().filter(|s| s.group == *group) {
                        @if let Some(v) = by_key.get(setting.key) { (field(setting, v, &fb)) }
                    }
                }
            }
        }
    };
    layout::html(status, layout::page("Credentials", Nav::Credentials, body))
}

fn source_badge(source: Source) -> Markup {
    html! { span.badge.(source.as_str()) data-source=(source.as_str()) { (source.as_str()) } }
}

fn field(setting: &Setting, view: &SettingView, fb: &Feedback) -> Markup {
    let id = setting.key.replace('.', "-");
    let error = fb.errors.get(setting.key);
    let is_set = view.source != Source::Unset;
    html! {
        div.field data-setting=(setting.key) {
            label.name for=(id) { (setting.label) }
            div {
                @if !setting.storable {
                    // Read-only: the value (masked if secret) and where it comes from.
                    code #(id) { @if is_set { (view.shown) } @else { "—" } }
                    " " (source_badge(view.source))
                } @else if view.secret {
                    input #(id) type="password" name=(setting.key) autocomplete="off"
                        placeholder=(if is_set { format!("{MASK} (set — leave blank to keep)") } else { "not set".to_string() })
                        aria-invalid=[error.map(|_| "true")];
                    " " (source_badge(view.source))
                } @else {
                    input #(id) type="text" name=(setting.key) autocomplete="off"
                        inputmode=[(setting.kind == Kind::Url).then_some("url")]
                        value=(fb.entered.get(setting.key).map(String::as_str).unwrap_or(&view.shown))
                        aria-invalid=[error.map(|_| "true")];
                    " " (source_badge(view.source))
                }
                @if let Some(e) = error {
                    div.error role="alert" id={ (id) "-error" } { (e) }
                }
                @if setting.storable && view.source == Source::Store {
                    label.meta { input type="checkbox" name="clear" value=(setting.key); " clear the stored value" }
                }
                div.meta { (setting.help) " · " code { (setting.env) } }
            }
        }
    }
}
