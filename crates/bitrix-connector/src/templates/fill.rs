//! From "send template X with these values" to the `template` object of a Graph send: the
//! operator's `/template NAME [lang]` lines (or a REST call's values), the template found in
//! the synced list or the config file, every variable filled exactly once, media links checked.
//! A refusal is a sentence for the operator naming what is wrong; nothing is sent.

use serde_json::{Value, json};

use super::{Approved, Slot, Variable, stored};
use crate::{relay::Relay, to_whatsapp::template::Template as Configured};

/// What an operator's message asks for, read off its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/templates`: list the approved ones.
    List,
    /// `/template NAME [lang]` and the values on the lines after it.
    Send {
        name: String,
        language: Option<String>,
        given: Given,
    },
}

/// Values as given: `key=value` lines, and bare lines filling the rest in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    pub keyed: Vec<(String, String)>,
    pub positional: Vec<String>,
}

impl Given {
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty() && self.positional.is_empty()
    }
}

/// The longest value a variable takes (Meta's body limit is 1024 characters for all of it).
const MAX_VALUE_CHARS: usize = 1024;
/// Meta's limit for a header's text, variable included.
const MAX_HEADER_CHARS: usize = 60;
/// Meta's limit for a coupon code.
const MAX_COUPON_CHARS: usize = 15;
/// The longest media link taken.
const MAX_LINK_CHARS: usize = 2000;

/// Reads the command from an operator's text (already plain, as sent to WhatsApp). It opens
/// the message (perhaps after the operator signature line, `*Maria:*`) with the values on the
/// lines below, or stands alone on the last line; a reply that merely mentions `/template`
/// elsewhere is an ordinary reply.
pub fn command(plain: &str) -> Option<Command> {
    let lines: Vec<&str> = plain
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let at = lines.iter().position(|l| is_command(l))?;
    let opens = at == 0
        || (at == 1
            && lines[0]
                .trim_matches(|c| c == '*' || c == '_')
                .ends_with(':'));
    // On the last line, with no values, it is the command as it always was, whatever the
    // reply says above it.
    if !opens && at + 1 != lines.len() {
        return None;
    }
    let mut words = lines[at].split_whitespace();
    let verb = words.next()?;
    if verb == "/templates" {
        return Some(Command::List);
    }
    let name = words.next()?.to_string();
    let language = words.next().map(str::to_string);
    if words.next().is_some() {
        return None;
    }
    let mut given = Given::default();
    for l in &lines[at + 1..] {
        match l.split_once('=') {
            Some((k, v)) if is_key(k.trim()) => given
                .keyed
                .push((k.trim().to_string(), v.trim().to_string())),
            _ => given.positional.push(l.to_string()),
        }
    }
    Some(Command::Send {
        name,
        language,
        given,
    })
}

fn is_command(line: &str) -> bool {
    let verb = line.split_whitespace().next().unwrap_or("");
    verb == "/template" || verb == "/templates"
}

/// A key as typed before `=`: a variable's name, never a sentence with `=` in it.
fn is_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 64
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The template a send is for: the synced one (or only the config file's entry), its
/// language settled.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    pub language: String,
    pub synced: Option<Approved>,
    /// `body_parameters` of the config file's entry: body values when none are given.
    pub defaults: Vec<String>,
}

/// Finds the template by name (any case) and language: the one given, else the config file's,
/// else the only approved one. `Err` is the operator's note.
pub async fn resolve(
    relay: &Relay,
    name: &str,
    language: Option<&str>,
) -> Result<Resolved, String> {
    let db = &relay.core.db;
    let configured = crate::to_whatsapp::template::templates(&relay.core)
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name))
        .cloned();
    let synced = stored::named(db, name).await.map_err(|e| {
        format!("⚠ Not sent: the template list could not be read ({e}). Try again.")
    })?;
    let wanted = language
        .map(str::to_string)
        .or_else(|| configured.as_ref().map(|c| c.language.clone()));
    let pick = match &wanted {
        Some(lang) => synced
            .iter()
            .find(|t| t.language.eq_ignore_ascii_case(lang))
            .cloned(),
        None => {
            let approved: Vec<&Approved> = synced.iter().filter(|t| t.is_approved()).collect();
            match (approved.as_slice(), synced.as_slice()) {
                ([one], _) => Some((*one).clone()),
                ([], [one]) => Some(one.clone()),
                ([], []) => None,
                _ => {
                    let langs: Vec<&str> = approved.iter().map(|t| t.language.as_str()).collect();
                    return Err(format!(
                        "⚠ Not sent: the template \"{name}\" exists in {}. Add the language after the name, e.g. /template {name} {}",
                        langs.join(", "),
                        langs[0]
                    ));
                }
            }
        }
    };
    match (pick, configured) {
        (Some(t), configured) => {
            if !t.is_approved() {
                return Err(not_approved(&t));
            }
            Ok(Resolved {
                name: t.name.clone(),
                language: t.language.clone(),
                defaults: configured
                    .filter(|c| c.language.eq_ignore_ascii_case(&t.language))
                    .map(|c| c.body_parameters)
                    .unwrap_or_default(),
                synced: Some(t),
            })
        }
        // Only in the config file: sent as configured; Meta checks it.
        (None, Some(c)) if language.is_none_or(|l| l.eq_ignore_ascii_case(&c.language)) => {
            Ok(from_config(c))
        }
        (None, _) => Err(unknown(relay, name, language).await),
    }
}

fn from_config(c: Configured) -> Resolved {
    Resolved {
        name: c.name,
        language: c.language,
        synced: None,
        defaults: c.body_parameters,
    }
}

/// The note for a template Meta holds back, with what to do.
pub fn not_approved(t: &Approved) -> String {
    let why = match t.status.to_ascii_uppercase().as_str() {
        "PAUSED" => crate::error::fix::META_132015,
        "DISABLED" => crate::error::fix::META_132016,
        "PENDING" | "IN_APPEAL" => {
            "Meta has not approved it yet: wait for the review in WhatsApp Manager, or send an approved template."
        }
        _ => {
            "Only approved templates can be sent: fix it in WhatsApp Manager → Message templates, or send an approved one."
        }
    };
    format!(
        "⚠ Not sent: the template \"{}\" ({}) is {} at Meta. {why}",
        t.name,
        t.language,
        t.status.to_ascii_lowercase()
    )
}

async fn unknown(relay: &Relay, name: &str, language: Option<&str>) -> String {
    let what = match language {
        Some(l) => format!("\"{name}\" in {l}"),
        None => format!("\"{name}\""),
    };
    format!(
        "⚠ Not sent: no approved template named {what}. {}",
        listing(relay).await
    )
}

/// The most templates a note lists.
const LISTED: usize = 30;

/// "Approved templates: …" for the notes: synced and configured, with their variables.
pub async fn listing(relay: &Relay) -> String {
    let synced = stored::all(&relay.core.db).await.unwrap_or_default();
    let mut lines: Vec<String> = synced
        .iter()
        .filter(|t| t.is_approved())
        .map(|t| {
            let keys: Vec<String> = t.variables().into_iter().map(|v| v.key).collect();
            if keys.is_empty() {
                format!("{} ({})", t.name, t.language)
            } else {
                format!("{} ({}): {}", t.name, t.language, keys.join(", "))
            }
        })
        .collect();
    for c in crate::to_whatsapp::template::templates(&relay.core) {
        if !synced.iter().any(|t| t.name.eq_ignore_ascii_case(&c.name)) {
            lines.push(format!("{} ({})", c.name, c.language));
        }
    }
    if lines.is_empty() {
        return "No approved templates are known: create one in WhatsApp Manager → Message templates and set meta.waba_id so Switchboard loads them (or list them as [[bitrix.templates]] in the config file).".into();
    }
    let more = lines.len().saturating_sub(LISTED);
    lines.truncate(LISTED);
    let mut text = format!(
        "Approved templates (name, language: variables):\n{}",
        lines.join("\n")
    );
    if more > 0 {
        text.push_str(&format!("\n…and {more} more"));
    }
    text.push_str("\nSend one with /template NAME, each variable on its own line as key=value.");
    text
}

/// The filled `template` object of the send and the values by variable. `customer` replaces
/// `{name}` in values. `Err` names every missing and extra value.
pub fn fill(
    r: &Resolved,
    given: &Given,
    customer: &str,
) -> Result<(Value, Vec<(Variable, String)>), String> {
    let vars = match &r.synced {
        Some(t) => t.variables(),
        // Only the config file's entry: its body values are all that is known.
        None => {
            let count = if given.is_empty() {
                r.defaults.len()
            } else {
                given.keyed.len() + given.positional.len()
            };
            (1..=count)
                .map(|i| Variable {
                    key: i.to_string(),
                    slot: Slot::Body,
                    parameter_name: None,
                    example: None,
                })
                .collect()
        }
    };
    let given = if given.is_empty() && !r.defaults.is_empty() {
        Given {
            keyed: Vec::new(),
            positional: r.defaults.clone(),
        }
    } else {
        given.clone()
    };
    let mut values: Vec<Option<String>> = vec![None; vars.len()];
    let mut extra = Vec::new();
    for (k, v) in &given.keyed {
        match vars.iter().position(|var| var.key.eq_ignore_ascii_case(k)) {
            Some(i) if values[i].is_none() => values[i] = Some(v.clone()),
            Some(_) => extra.push(format!("{k} (given twice)")),
            None => extra.push(k.clone()),
        }
    }
    let mut positional = given.positional.iter();
    for slot in values.iter_mut().filter(|v| v.is_none()) {
        match positional.next() {
            Some(v) => *slot = Some(v.clone()),
            None => break,
        }
    }
    let leftover = positional.count();
    if leftover > 0 {
        extra.push(format!(
            "{leftover} value(s) beyond the template's variables"
        ));
    }
    let missing: Vec<&str> = vars
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.as_deref().is_none_or(|v| v.trim().is_empty()))
        .map(|(var, _)| var.key.as_str())
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        let all: Vec<&str> = vars.iter().map(|v| v.key.as_str()).collect();
        let mut note = format!(
            "⚠ Not sent: the template \"{}\" ({}) needs {}.",
            r.name,
            r.language,
            if all.is_empty() {
                "no values".to_string()
            } else {
                all.join(", ")
            }
        );
        if !missing.is_empty() {
            note.push_str(&format!(" Missing: {}.", missing.join(", ")));
        }
        if !extra.is_empty() {
            note.push_str(&format!(" Not in the template: {}.", extra.join(", ")));
        }
        note.push_str(&format!(
            " Write each on its own line after the command:\n/template {} {}",
            r.name, r.language
        ));
        for v in &vars {
            note.push_str(&format!("\n{}=…", v.key));
        }
        return Err(note);
    }
    let filled: Vec<(Variable, String)> = vars
        .into_iter()
        .zip(values)
        .map(|(var, v)| {
            let v = v.unwrap_or_default().trim().replace("{name}", customer);
            (var, v)
        })
        .collect();
    for (var, v) in &filled {
        check_value(var, v)?;
    }
    let mut template = json!({"name": r.name, "language": {"code": r.language}});
    let components = components(&filled);
    if !components.is_empty() {
        template["components"] = Value::Array(components);
    }
    Ok((template, filled))
}

fn check_value(var: &Variable, v: &str) -> Result<(), String> {
    let chars = v.chars().count();
    let refuse =
        |why: String| -> Result<(), String> { Err(format!("⚠ Not sent: {} {why}", var.key)) };
    match &var.slot {
        Slot::HeaderMedia { format } => media_link(v)
            .map(drop)
            .or_else(|why| refuse(format!("must be the {format}'s link: {why}"))),
        Slot::HeaderText if chars > MAX_HEADER_CHARS => refuse(format!(
            "is {chars} characters; a header takes at most {MAX_HEADER_CHARS}."
        )),
        Slot::Button { sub_type, .. } if sub_type == "copy_code" && chars > MAX_COUPON_CHARS => {
            refuse(format!(
                "is {chars} characters; a coupon code takes at most {MAX_COUPON_CHARS}."
            ))
        }
        _ if chars > MAX_VALUE_CHARS => refuse(format!(
            "is {chars} characters; a value takes at most {MAX_VALUE_CHARS}."
        )),
        _ => Ok(()),
    }
}

/// A header's media link: Meta downloads it, so Switchboard never fetches it, but only a
/// public `https://` address of a named host is passed on (no credentials in it, no IP
/// literal, no local name).
pub fn media_link(v: &str) -> Result<reqwest::Url, String> {
    if v.chars().count() > MAX_LINK_CHARS {
        return Err(format!("longer than {MAX_LINK_CHARS} characters"));
    }
    let url = reqwest::Url::parse(v).map_err(|_| "not a web address".to_string())?;
    if url.scheme() != "https" {
        return Err("only https:// links are sent".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("a link must not carry a user name or password".into());
    }
    let host = url.host_str().ok_or("the link has no host")?;
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Err("the host must be a domain name, not an IP address".into());
    }
    let local = !host.contains('.')
        || host.ends_with(".local")
        || host.ends_with(".internal")
        || host.ends_with(".localhost");
    if local {
        return Err("the host must be a public domain name".into());
    }
    Ok(url)
}

/// Graph's `components` of the send: header, body, then each button by index.
fn components(filled: &[(Variable, String)]) -> Vec<Value> {
    let param = |var: &Variable, kind: &str, value: Value| {
        let mut p = json!({"type": kind});
        p[kind] = value;
        if let Some(n) = &var.parameter_name {
            p["parameter_name"] = json!(n);
        }
        p
    };
    let mut out = Vec::new();
    let header: Vec<Value> = filled
        .iter()
        .filter_map(|(var, v)| match &var.slot {
            Slot::HeaderText => Some(param(var, "text", json!(v))),
            Slot::HeaderMedia { format } => Some(param(var, format, json!({"link": v}))),
            _ => None,
        })
        .collect();
    if !header.is_empty() {
        out.push(json!({"type": "header", "parameters": header}));
    }
    let body: Vec<Value> = filled
        .iter()
        .filter(|(var, _)| var.slot == Slot::Body)
        .map(|(var, v)| param(var, "text", json!(v)))
        .collect();
    if !body.is_empty() {
        out.push(json!({"type": "body", "parameters": body}));
    }
    for (var, v) in filled {
        if let Slot::Button { index, sub_type } = &var.slot {
            let p = if sub_type == "copy_code" {
                json!({"type": "coupon_code", "coupon_code": v})
            } else {
                json!({"type": "text", "text": v})
            };
            out.push(json!({"type": "button", "sub_type": sub_type, "index": index.to_string(), "parameters": [p]}));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_opens_the_message_or_follows_the_signature() {
        assert_eq!(
            command(
                "*Maria Petrova:*\n/template order_update en_US\n1=Anna\nbutton1 = 1042\nplain"
            ),
            Some(Command::Send {
                name: "order_update".into(),
                language: Some("en_US".into()),
                given: Given {
                    keyed: vec![
                        ("1".into(), "Anna".into()),
                        ("button1".into(), "1042".into())
                    ],
                    positional: vec!["plain".into()],
                },
            })
        );
        assert_eq!(command("/templates"), Some(Command::List));
        assert_eq!(command("*Maria:*\n/templates"), Some(Command::List));
        assert_eq!(command("Hello\nsee /template x"), None);
        assert!(matches!(
            command("Hello\nthere\n/template x"),
            Some(Command::Send { name, given, .. }) if name == "x" && given.is_empty()
        ));
        assert_eq!(command("Hello\n/template x\n1=a"), None);
        assert_eq!(command("/templatex"), None);
        assert_eq!(command("/template"), None);
        assert_eq!(command("/TEMPLATE x"), None, "commands are lower-case");
    }

    #[test]
    fn media_links_must_be_public_https() {
        assert!(media_link("https://cdn.example.com/a.jpg").is_ok());
        assert!(media_link("http://cdn.example.com/a.jpg").is_err());
        assert!(media_link("https://127.0.0.1/a.jpg").is_err());
        assert!(media_link("https://[::1]/a.jpg").is_err());
        assert!(media_link("https://localhost/a.jpg").is_err());
        assert!(media_link("https://user:pw@cdn.example.com/a.jpg").is_err());
        assert!(media_link("file:///etc/passwd").is_err());
    }
}
