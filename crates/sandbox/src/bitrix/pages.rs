//! The few portal pages a person uses in the sandbox: the local application's page, where an
//! administrator enters the app's install path and opens it (the portal then posts the install
//! fields to that path, as the iframe install does), and the Open Channels with their chats.
//! Not the real portal's look; only what the sandbox needs to click through.

use axum::{
    Form,
    extract::State,
    response::{Html, IntoResponse, Response},
};

use super::{Shared, install, state::ChatMessage};

/// Where the local-application page lives on the fake portal.
pub const LOCAL_APP_PATH: &str = "/devops/section/local-app/";
/// Where the Open Channels and their chats are listed.
pub const OPEN_LINES_PATH: &str = "/contact_center/openlines/";

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} — fake Bitrix24</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}\
         input[type=text]{{width:32rem}} .ok{{color:#16794c}} .bad{{color:#b42318}} li{{margin:.3rem 0}}</style>\
         </head><body><p><a href=\"{LOCAL_APP_PATH}\">Local application</a> · <a href=\"{OPEN_LINES_PATH}\">Open Channels</a></p>\
         <h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    ))
}

pub(crate) async fn local_app() -> Html<String> {
    page("Local application", &install_form(""))
}

fn install_form(value: &str) -> String {
    format!(
        "<p>Developer resources → Other → Local application (type Server, scopes imopenlines, \
         imconnector, crm, im). Paste the install URL shown on Switchboard's /setup page, then \
         open the app: the portal posts the app's grant to it.</p>\
         <form method=\"post\" action=\"{LOCAL_APP_PATH}\"><label>Initial installation path \
         <input type=\"text\" name=\"install_url\" id=\"install_url\" value=\"{}\"></label> \
         <button type=\"submit\" id=\"install\">Save and open the app</button></form>",
        escape(value)
    )
}

#[derive(serde::Deserialize)]
pub(crate) struct InstallForm {
    install_url: String,
}

pub(crate) async fn install(State(s): State<Shared>, Form(f): Form<InstallForm>) -> Response {
    let url = f.install_url.trim();
    let valid = reqwest::Url::parse(url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !valid {
        let body = format!(
            "<p class=\"bad\" id=\"result\">Not a URL: enter the install URL from /setup.</p>{}",
            install_form(url)
        );
        return page("Local application", &body).into_response();
    }
    let outcome = install::with_ui(&s, url).await;
    let result = if outcome.installed {
        "<p class=\"ok\" id=\"result\" data-installed=\"true\">The application is installed.</p>"
            .to_string()
    } else {
        format!(
            "<p class=\"bad\" id=\"result\" data-installed=\"false\">The install did not finish: the app answered {}{}.</p>",
            outcome
                .status
                .map_or("nothing (unreachable)".to_string(), |c| format!("HTTP {c}")),
            if outcome.calls_install_finish {
                ""
            } else {
                " without calling BX24.installFinish()"
            }
        )
    };
    page(
        "Local application",
        &format!("{result}{}", install_form(url)),
    )
    .into_response()
}

pub(crate) async fn open_lines(State(s): State<Shared>) -> Html<String> {
    let portal = s.portal();
    let mut lines = vec![portal.cfg.line_id];
    lines.extend(portal.cfg.extra_lines.iter().copied());
    lines.sort_unstable();
    lines.dedup();
    let mut body = String::new();
    for line in lines {
        let name = portal
            .line_names
            .get(&line)
            .cloned()
            .unwrap_or_else(|| format!("Open Channel {line}"));
        let connected: Vec<String> = portal
            .statuses
            .iter()
            .filter(|((_, l), st)| *l == line && st.active)
            .map(|((c, _), _)| escape(c))
            .collect();
        body.push_str(&format!(
            "<h2 data-line=\"{line}\">{} (line {line})</h2><p>Connectors active: {}</p>",
            escape(&name),
            if connected.is_empty() {
                "none".to_string()
            } else {
                connected.join(", ")
            }
        ));
        for chat in portal.chats.iter().filter(|c| c.line == line) {
            body.push_str(&format!(
                "<h3>{}</h3><ul>",
                escape(chat.name.as_deref().unwrap_or(&chat.external_chat_id))
            ));
            for m in &chat.messages {
                let (who, text) = match m {
                    ChatMessage::Customer(c) => (
                        "customer",
                        c.text
                            .clone()
                            .unwrap_or_else(|| format!("[{} file(s)]", c.files.len())),
                    ),
                    ChatMessage::Operator(o) => ("operator", o.text.clone()),
                    ChatMessage::System(n) => ("system", n.text.clone()),
                };
                body.push_str(&format!(
                    "<li class=\"{who}\"><b>{who}:</b> {}</li>",
                    escape(&text)
                ));
            }
            body.push_str("</ul>");
        }
    }
    page("Open Channels", &body)
}
