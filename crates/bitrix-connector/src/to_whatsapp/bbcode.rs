//! Operator text is Bitrix BBCode; WhatsApp has its own markers (protocol §6, §9). The text is
//! parsed into a tree, tolerating anything an operator can type: unclosed tags lose their
//! markup but keep their text, stray closing tags vanish, tags close out of order, and tags
//! WhatsApp can't show (mentions, colours, unknown ones) become their plain text.

/// Tags with no closing partner.
const VOID: &[&str] = &[
    "br",
    "icon",
    "timestamp",
    "disk",
    "like",
    "dislike",
    "*",
    "hr",
];
/// Void tags that leave nothing behind.
const DROPPED: &[&str] = &["icon", "timestamp", "disk", "like", "dislike"];

#[derive(Debug)]
enum Node {
    Text(String),
    Tag {
        name: String,
        arg: Option<String>,
        children: Vec<Node>,
    },
}

struct Frame {
    name: String,
    arg: Option<String>,
    children: Vec<Node>,
}

/// `[name]`, `[name=arg]`, `[name arg]`, `[/name]` at the start of `s`: (closing, name, arg, len).
fn tag_at(s: &str) -> Option<(bool, String, Option<String>, usize)> {
    let end = s.find(']')?;
    let inner = &s[1..end];
    if inner.is_empty() || inner.contains('[') || inner.len() > 2048 {
        return None;
    }
    let (closing, body) = match inner.strip_prefix('/') {
        Some(b) => (true, b),
        None => (false, inner),
    };
    let name_len = body.find(['=', ' ']).unwrap_or(body.len());
    let name = body[..name_len].to_ascii_lowercase();
    let valid = name == "*" || (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic()));
    if !valid || (closing && name_len != body.len()) {
        return None;
    }
    let arg = body[name_len..]
        .strip_prefix('=')
        .or_else(|| body[name_len..].strip_prefix(' '))
        .map(|a| a.trim().trim_matches('"').to_string());
    Some((closing, name, arg, end + 1))
}

fn parse(input: &str) -> Vec<Node> {
    let mut stack: Vec<Frame> = vec![Frame {
        name: String::new(),
        arg: None,
        children: Vec::new(),
    }];
    let mut text = String::new();
    let mut i = 0;
    let flush = |text: &mut String, stack: &mut Vec<Frame>| {
        if !text.is_empty() {
            let t = std::mem::take(text);
            stack
                .last_mut()
                .expect("root frame")
                .children
                .push(Node::Text(t));
        }
    };
    while i < input.len() {
        let rest = &input[i..];
        if rest.starts_with('[')
            && let Some((closing, name, arg, len)) = tag_at(rest)
        {
            flush(&mut text, &mut stack);
            i += len;
            if closing {
                // Close the nearest open tag of that name, and whatever was left open inside.
                if let Some(pos) = stack.iter().rposition(|f| f.name == name && pos_ok(f)) {
                    while stack.len() > pos {
                        let f = stack.pop().expect("frame");
                        let node = Node::Tag {
                            name: f.name,
                            arg: f.arg,
                            children: f.children,
                        };
                        stack.last_mut().expect("root frame").children.push(node);
                    }
                }
            } else if VOID.contains(&name.as_str()) {
                stack
                    .last_mut()
                    .expect("root frame")
                    .children
                    .push(Node::Tag {
                        name,
                        arg,
                        children: Vec::new(),
                    });
            } else if stack.len() < 64 {
                stack.push(Frame {
                    name,
                    arg,
                    children: Vec::new(),
                });
            }
            continue;
        }
        let c = rest.chars().next().expect("non-empty rest");
        text.push(c);
        i += c.len_utf8();
    }
    flush(&mut text, &mut stack);
    // Never closed: the markup goes, the text stays where it was.
    while stack.len() > 1 {
        let f = stack.pop().expect("frame");
        stack
            .last_mut()
            .expect("root frame")
            .children
            .extend(f.children);
    }
    stack.pop().map(|f| f.children).unwrap_or_default()
}

fn pos_ok(f: &Frame) -> bool {
    !f.name.is_empty()
}

#[derive(Clone, Copy, Default)]
struct Active {
    bold: bool,
    italic: bool,
    strike: bool,
}

fn plain(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| match n {
            Node::Text(t) => t.clone(),
            Node::Tag { name, .. } if name == "br" => "\n".to_string(),
            Node::Tag { children, .. } => plain(children),
        })
        .collect()
}

/// `*x*` with the markers hugging the text of each line: WhatsApp ignores `* x *` and never
/// carries a marker across a line break. A quote prefix stays in front of the marker.
fn wrap(inner: &str, marker: &str) -> String {
    inner
        .split('\n')
        .map(|line| {
            let (prefix, body) = match line.strip_prefix("> ") {
                Some(rest) => ("> ", rest),
                None => ("", line),
            };
            let trimmed = body.trim();
            if trimmed.is_empty() {
                return line.to_string();
            }
            let start = body.len() - body.trim_start().len();
            let end = start + trimmed.len();
            format!(
                "{prefix}{}{marker}{trimmed}{marker}{}",
                &body[..start],
                &body[end..]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn render(nodes: &[Node], active: Active) -> String {
    let mut out = String::new();
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(&decode_entities(t)),
            Node::Tag {
                name,
                arg,
                children,
            } => {
                // A quote is whole lines: `> ` only counts at the start of one.
                if name == "quote" && !out.is_empty() && !out.ends_with('\n') {
                    out.truncate(out.trim_end_matches([' ', '\t']).len());
                    out.push('\n');
                }
                out.push_str(&render_tag(name, arg.as_deref(), children, active));
            }
        }
    }
    out
}

fn render_tag(name: &str, arg: Option<&str>, children: &[Node], active: Active) -> String {
    match name {
        "br" => "\n".into(),
        "b" if !active.bold => wrap(
            &render(
                children,
                Active {
                    bold: true,
                    ..active
                },
            ),
            "*",
        ),
        "i" if !active.italic => wrap(
            &render(
                children,
                Active {
                    italic: true,
                    ..active
                },
            ),
            "_",
        ),
        "s" if !active.strike => wrap(
            &render(
                children,
                Active {
                    strike: true,
                    ..active
                },
            ),
            "~",
        ),
        // Monospace shows markup literally, so the inner tags lose their meaning, not their text.
        "code" => {
            let raw = decode_entities(&plain(children));
            if raw.trim().is_empty() {
                raw
            } else {
                format!("```{raw}```")
            }
        }
        "quote" => quote_lines(render(children, active).trim_matches('\n')) + "\n",
        "url" => {
            let text = render(children, active);
            match arg
                .map(|a| decode_entities(a.trim()))
                .filter(|a| !a.is_empty())
            {
                Some(url) if text.trim().is_empty() || text.trim() == url => url,
                Some(url) => format!("{text} ({url})"),
                None => text.trim().to_string(),
            }
        }
        // `[img size=…]URL [/img]`: the picture can't be inlined, its address can.
        "img" => decode_entities(plain(children).trim()),
        n if DROPPED.contains(&n) => String::new(),
        "*" => "\n• ".into(),
        // Mentions (`user`, `chat`, `send`, `put`, `call`, `context`), colours, sizes and
        // unknown tags: their text is what the customer should read.
        _ => render(children, active),
    }
}

/// `> ` before every line (WhatsApp's quote).
fn quote_lines(text: &str) -> String {
    text.split('\n')
        .map(|l| {
            if l.trim().is_empty() {
                ">".to_string()
            } else {
                format!("> {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A line of six or more dashes: Bitrix frames a quoted message between two of them.
fn is_quote_rule(line: &str) -> bool {
    let t = line.trim();
    t.len() >= 6 && t.bytes().all(|b| b == b'-')
}

/// Bitrix's plain-text quotes (protocol §6): `>>line`, and a block framed by `------` lines,
/// become `> ` lines. Text inside a ``` block is left as typed; an unclosed frame is kept,
/// since a lone dashed line is just a separator.
fn plain_quotes(text: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len());
    let mut in_code = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let fences = line.matches("```").count();
        if !in_code && is_quote_rule(line) {
            let close = lines[i + 1..]
                .iter()
                .position(|l| is_quote_rule(l) || l.contains("```"))
                .map(|p| i + 1 + p)
                .filter(|&c| is_quote_rule(lines[c]));
            if let Some(close) = close {
                out.push(quote_lines(&lines[i + 1..close].join("\n")));
                i = close + 1;
                continue;
            }
        }
        match line.strip_prefix(">>") {
            Some(rest) if !in_code => out.push(format!("> {}", rest.trim_start())),
            _ => out.push(line.to_string()),
        }
        if fences % 2 == 1 {
            in_code = !in_code;
        }
        i += 1;
    }
    out.join("\n")
}

/// HTML entities Bitrix may leave in message text, decoded in one pass (so `&amp;lt;` is `&lt;`).
fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let entity = rest[1..]
            .find(';')
            .filter(|&n| n <= 10)
            .and_then(|n| entity_char(&rest[1..1 + n]).map(|c| (c, n + 2)));
        match entity {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity_char(name: &str) -> Option<char> {
    let numeric = |digits: &str, radix| {
        u32::from_str_radix(digits, radix)
            .ok()
            .and_then(char::from_u32)
            .filter(|c| *c != '\0')
    };
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        n => match n.strip_prefix('#') {
            Some(hex) if hex.starts_with(['x', 'X']) => numeric(&hex[1..], 16),
            Some(dec) if !dec.is_empty() && dec.bytes().all(|b| b.is_ascii_digit()) => {
                numeric(dec, 10)
            }
            _ => None,
        },
    }
}

/// Bitrix BBCode → WhatsApp text.
pub fn to_whatsapp(bbcode: &str) -> String {
    let text = render(&parse(bbcode), Active::default());
    plain_quotes(&text).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::to_whatsapp;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    #[test]
    fn the_protocol_table() {
        assert_eq!(
            to_whatsapp("[b]Order 1042[/b] ships [i]today[/i]"),
            "*Order 1042* ships _today_"
        );
        assert_eq!(
            to_whatsapp("[B]x[/B] [s]old[/s] [u]under[/u]"),
            "*x* ~old~ under"
        );
        assert_eq!(to_whatsapp("a[br]b\nc"), "a\nb\nc");
        assert_eq!(
            to_whatsapp("[url=https://x.io]site[/url]"),
            "site (https://x.io)"
        );
        assert_eq!(to_whatsapp("[url]https://x.io[/url]"), "https://x.io");
        assert_eq!(
            to_whatsapp("[url=https://x.io]https://x.io[/url]"),
            "https://x.io"
        );
        assert_eq!(
            to_whatsapp("[code]let [b]x[/b] = 1;[/code]"),
            "```let x = 1;```"
        );
        assert_eq!(
            to_whatsapp("[quote]one\ntwo[/quote]after"),
            "> one\n> two\nafter"
        );
        assert_eq!(to_whatsapp("hi [user=12]Maria[/user]!"), "hi Maria!");
        assert_eq!(to_whatsapp("[color=#f00]red[/color][like][icon=x]"), "red");
        assert_eq!(
            to_whatsapp("[b]Maria Petrova:[/b][br] Your order"),
            "*Maria Petrova:*\n Your order"
        );
        assert_eq!(to_whatsapp("[b] spaced [/b]"), " *spaced*");
        assert_eq!(to_whatsapp("Tom &amp; Jerry"), "Tom & Jerry");
    }

    #[test]
    fn emphasis_markers_hug_the_text_on_every_line() {
        assert_eq!(to_whatsapp("a [b] bold [/b] b"), "a  *bold*  b");
        assert_eq!(to_whatsapp("[i]one\ntwo[/i]"), "_one_\n_two_");
        assert_eq!(to_whatsapp("[s]x[br][br]y[/s]"), "~x~\n\n~y~");
        assert_eq!(to_whatsapp("[b][/b]x"), "x");
        assert_eq!(to_whatsapp("[b][quote]q[/quote][/b]"), "> *q*");
    }

    #[test]
    fn every_tag_of_the_protocol_table() {
        // Case-insensitive names, arguments quoted or not.
        assert_eq!(to_whatsapp("[I]x[/i] [S]y[/S]"), "_x_ ~y~");
        assert_eq!(to_whatsapp("[U]u[/U][size=20]big[/size]"), "ubig");
        assert_eq!(
            to_whatsapp("[URL=\"https://x.io/?a=1&amp;b=2\"]site[/URL]"),
            "site (https://x.io/?a=1&b=2)"
        );
        assert_eq!(to_whatsapp("[url=https://x.io][/url]"), "https://x.io");
        assert_eq!(to_whatsapp("[CODE]a &lt; b[/CODE]"), "```a < b```");
        assert_eq!(to_whatsapp("[code] [/code]x"), " x");
        assert_eq!(
            to_whatsapp("[QUOTE]Anna: hi[br]there[/QUOTE]ok"),
            "> Anna: hi\n> there\nok"
        );
        assert_eq!(
            to_whatsapp("[quote]a[quote]b[/quote][/quote]"),
            "> a\n> > b"
        );
        assert_eq!(
            to_whatsapp("as you said [quote]x[/quote]"),
            "as you said\n> x"
        );
        for tag in ["user", "chat", "send", "put", "call", "context"] {
            assert_eq!(to_whatsapp(&format!("[{tag}=7]T[/{tag}]!")), "T!", "{tag}");
        }
        assert_eq!(
            to_whatsapp("see [img size=200]https://p.x/a.png [/img]"),
            "see https://p.x/a.png"
        );
        assert_eq!(
            to_whatsapp(
                "a[icon=https://i.x/i.png size=15][timestamp=1700000000][like][dislike][disk=12]b"
            ),
            "ab"
        );
        assert_eq!(to_whatsapp("[list][*]one[*]two[/list]"), "\n• one\n• two");
        assert_eq!(to_whatsapp("[foo=bar]kept[/foo]"), "kept");
    }

    #[test]
    fn html_entities_are_decoded_once() {
        assert_eq!(
            to_whatsapp("&lt;b&gt; &quot;q&quot; &#39;a&apos;"),
            "<b> \"q\" 'a'"
        );
        assert_eq!(to_whatsapp("&#8364;5 &#x1F44D;"), "€5 👍");
        assert_eq!(to_whatsapp("&amp;lt; stays &lt;"), "&lt; stays <");
        assert_eq!(
            to_whatsapp("AT&T &unknown; &#0; &#xZZ; &"),
            "AT&T &unknown; &#0; &#xZZ; &"
        );
    }

    #[test]
    fn plain_text_quotes_become_whatsapp_quotes() {
        assert_eq!(
            to_whatsapp(">>quoted line\nanswer"),
            "> quoted line\nanswer"
        );
        assert_eq!(to_whatsapp(">> a[br]>>b"), "> a\n> b");
        let block = "------------------------------------------------------\n\
                     Anna Schmidt [10.01.2025 12:00]\n\
                     Where is my order?\n\
                     ------------------------------------------------------\n\
                     It ships today.";
        assert_eq!(
            to_whatsapp(block),
            "> Anna Schmidt [10.01.2025 12:00]\n> Where is my order?\nIt ships today."
        );
        // A lone rule is a separator, and code is shown as typed.
        assert_eq!(to_whatsapp("a\n------\nb"), "a\n------\nb");
        assert_eq!(to_whatsapp("[code]>>x[/code]"), "```>>x```");
        assert_eq!(
            to_whatsapp("[code]x\n------\ny\n------[/code]"),
            "```x\n------\ny\n------```"
        );
    }

    #[test]
    fn malformed_markup_keeps_the_text() {
        assert_eq!(to_whatsapp("[b]never closed"), "never closed");
        assert_eq!(to_whatsapp("stray[/b] close"), "stray close");
        assert_eq!(to_whatsapp("[b][i]x[/b][/i]"), "*_x_*");
        assert_eq!(to_whatsapp("[b][b]x[/b][/b]"), "*x*");
        assert_eq!(
            to_whatsapp("see [1] and [ b ] and a[b"),
            "see [1] and [ b ] and a[b"
        );
        assert_eq!(to_whatsapp("[[b]x[/b]]"), "[*x*]");
    }

    const TAGS: &[(&str, &str)] = &[
        ("[b]", "[/b]"),
        ("[i]", "[/i]"),
        ("[s]", "[/s]"),
        ("[u]", "[/u]"),
        ("[quote]", "[/quote]"),
        ("[code]", "[/code]"),
        ("[user=5]", "[/user]"),
        ("[url=https://e.x]", "[/url]"),
        ("[color=#123]", "[/color]"),
        ("[foo]", "[/foo]"),
        ("[CONTEXT=chat1/5]", "[/CONTEXT]"),
        ("[send=/x]", "[/send]"),
    ];

    /// Random nesting of tags around words; `break_markup` drops some closing tags and adds
    /// stray ones. Returns the BBCode and the words in order.
    fn generate(
        rng: &mut StdRng,
        depth: u32,
        break_markup: bool,
        words: &mut Vec<String>,
    ) -> String {
        let mut out = String::new();
        for _ in 0..rng.random_range(1..4) {
            if depth < 4 && rng.random_bool(0.5) {
                let (open, close) = TAGS[rng.random_range(0..TAGS.len())];
                out.push_str(open);
                out.push_str(&generate(rng, depth + 1, break_markup, words));
                if !(break_markup && rng.random_bool(0.3)) {
                    out.push_str(close);
                }
            } else {
                let w: String = (0..rng.random_range(1..6))
                    .map(|_| rng.random_range(b'a'..=b'z') as char)
                    .collect();
                words.push(w.clone());
                out.push_str(&w);
                out.push(if rng.random_bool(0.2) { '\n' } else { ' ' });
            }
            if break_markup && rng.random_bool(0.1) {
                out.push_str(TAGS[rng.random_range(0..TAGS.len())].1);
            }
        }
        out
    }

    #[test]
    fn property_words_survive_in_order_and_wellformed_markup_vanishes() {
        let mut rng = StdRng::seed_from_u64(0x5b17);
        for case in 0..2000 {
            let broken = case % 2 == 1;
            let mut words = Vec::new();
            let input = generate(&mut rng, 0, broken, &mut words);
            let out = to_whatsapp(&input);
            let mut rest = out.as_str();
            for w in &words {
                let at = rest
                    .find(w.as_str())
                    .unwrap_or_else(|| panic!("word {w:?} lost: {input:?} → {out:?}"));
                rest = &rest[at + w.len()..];
            }
            if !broken {
                assert!(!out.contains('['), "markup left: {input:?} → {out:?}");
            }
        }
        // Arbitrary bytes never panic.
        for _ in 0..2000 {
            let s: String = (0..rng.random_range(0..40))
                .map(|_| {
                    ['[', ']', '/', '=', 'b', 'i', 'x', ' ', '\n', 'é', '&', ';']
                        [rng.random_range(0..12)]
                })
                .collect();
            let _ = to_whatsapp(&s);
        }
    }
}
