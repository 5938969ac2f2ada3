//! App install and uninstall as the portal performs them (protocol §1). A (re-)install mints a
//! new grant and kills every token of the previous one.

use serde_json::json;

use super::Shared;
use super::oauth::{mint_grant, revoke_all};
use super::php;
use super::state::Grant;

/// Result of the script-only `ONAPPINSTALL` POST.
#[derive(Debug, Clone)]
pub struct InstallOutcome {
    /// The product's HTTP status, `None` if it could not be reached.
    pub status: Option<u16>,
    pub body: String,
    /// The grant that was posted. A product that verifies the install redeems its refresh
    /// token at once and holds the rotated pair (`FakeBitrix::current_tokens`) instead.
    pub grant: Grant,
}

/// Result of the iframe install. Bitrix only completes it when the page runs
/// `BX24.installFinish()` from the BX24 library and the browser is allowed to frame it.
#[derive(Debug, Clone)]
pub struct UiInstallOutcome {
    pub status: Option<u16>,
    pub body: String,
    pub loads_bx24_library: bool,
    pub calls_install_finish: bool,
    pub frameable: bool,
    pub installed: bool,
    pub grant: Grant,
}

fn reinstall(s: &Shared) -> Grant {
    let mut portal = s.portal();
    revoke_all(&mut portal);
    portal.installed = false;
    mint_grant(&mut portal, 1)
}

pub(crate) async fn script_only(s: &Shared, url: &str) -> InstallOutcome {
    let grant = reinstall(s);
    let form = {
        let portal = s.portal();
        let urls = s.urls();
        php::build_form(&json!({
            "event": "ONAPPINSTALL",
            "data": {"VERSION": "1", "ACTIVE": "Y", "INSTALLED": "Y", "LANGUAGE_ID": "en"},
            "ts": portal.now().to_string(),
            "auth": {
                "access_token": grant.access_token,
                "expires": grant.expires.to_string(),
                "expires_in": portal.cfg.access_ttl_secs.to_string(),
                "scope": portal.cfg.scope,
                "domain": urls.host,
                "server_endpoint": urls.server_endpoint(),
                "status": "L",
                "client_endpoint": urls.client_endpoint(),
                "member_id": portal.cfg.member_id,
                "user_id": "1",
                "refresh_token": grant.refresh_token,
                "application_token": portal.cfg.application_token,
            },
        }))
    };
    let (status, body, _) = post_form(s, url, &form).await;
    s.portal().installed = status.is_some_and(|c| (200..300).contains(&c));
    InstallOutcome {
        status,
        body,
        grant,
    }
}

pub(crate) async fn with_ui(s: &Shared, url: &str) -> UiInstallOutcome {
    let grant = reinstall(s);
    let (form, query) = {
        let portal = s.portal();
        let urls = s.urls();
        let form = php::build_form(&json!({
            "AUTH_ID": grant.access_token,
            "AUTH_EXPIRES": portal.cfg.access_ttl_secs.to_string(),
            "REFRESH_ID": grant.refresh_token,
            "SERVER_ENDPOINT": urls.server_endpoint(),
            "APPLICATION_TOKEN": portal.cfg.application_token,
            "APPLICATION_SCOPE": portal.cfg.scope,
            "member_id": portal.cfg.member_id,
            "status": "L",
            "PLACEMENT": "DEFAULT",
            "PLACEMENT_OPTIONS": "{}",
        }));
        let secure = urls.base.starts_with("https");
        let query = php::encode_form(&[
            ("DOMAIN".into(), urls.host.clone()),
            ("PROTOCOL".into(), if secure { "1" } else { "0" }.into()),
            ("LANG".into(), "en".into()),
            ("APP_SID".into(), super::state::random_hex(16)),
        ]);
        (form, query)
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let (status, body, headers) = post_form(s, &format!("{url}{sep}{query}"), &form).await;
    let loads_bx24_library = body.contains("api.bitrix24.com/api/v1");
    let calls_install_finish = body.contains("BX24.installFinish(");
    let frameable = frameable(&headers);
    let installed = status.is_some_and(|c| (200..300).contains(&c))
        && loads_bx24_library
        && calls_install_finish
        && frameable;
    s.portal().installed = installed;
    UiInstallOutcome {
        status,
        body,
        loads_bx24_library,
        calls_install_finish,
        frameable,
        installed,
        grant,
    }
}

/// The portal shows the page in an iframe: `X-Frame-Options` or a restrictive
/// `frame-ancestors` would leave a blank frame and the install never finishes.
fn frameable(headers: &[(String, String)]) -> bool {
    headers.iter().all(|(name, value)| {
        let v = value.to_lowercase();
        match name.as_str() {
            "x-frame-options" => !(v.contains("deny") || v.contains("sameorigin")),
            "content-security-policy" => !v
                .split(';')
                .map(str::trim)
                .any(|d| d == "frame-ancestors 'none'" || d == "frame-ancestors 'self'"),
            _ => true,
        }
    })
}

pub(crate) async fn uninstall(s: &Shared, url: &str) -> Option<u16> {
    let form = {
        let portal = s.portal();
        let urls = s.urls();
        php::build_form(&json!({
            "event": "ONAPPUNINSTALL",
            "data": {"LANGUAGE_ID": "en", "CLEAN": "0"},
            "ts": portal.now().to_string(),
            "auth": {
                "domain": urls.host,
                "server_endpoint": urls.server_endpoint(),
                "client_endpoint": urls.client_endpoint(),
                "member_id": portal.cfg.member_id,
                "application_token": portal.cfg.application_token,
            },
        }))
    };
    let (status, _, _) = post_form(s, url, &form).await;
    let mut portal = s.portal();
    revoke_all(&mut portal);
    portal.installed = false;
    portal.connectors.clear();
    portal.statuses.clear();
    portal.events.clear();
    status
}

async fn post_form(
    s: &Shared,
    url: &str,
    form: &[(String, String)],
) -> (Option<u16>, String, Vec<(String, String)>) {
    let sent = s
        .http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(php::encode_form(form))
        .send()
        .await;
    match sent {
        Err(_) => (None, String::new(), Vec::new()),
        Ok(r) => {
            let status = r.status().as_u16();
            let headers = r
                .headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            (Some(status), r.text().await.unwrap_or_default(), headers)
        }
    }
}
