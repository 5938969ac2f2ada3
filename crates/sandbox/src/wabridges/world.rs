//! The people and chats generated traffic is about. Names and bodies are chosen to exercise a
//! receiver: non-ASCII, emoji, quotes, an empty push name, right-to-left text, long bodies.

/// The bridge's own number: what `connected` reports and who `from_me` messages come from.
pub(super) const OWN_PHONE: &str = "15550000100";
pub(super) const OWN_NAME: &str = "Grand Estancia";

#[derive(Debug, Clone, Copy)]
pub(super) struct Contact {
    pub phone: &'static str,
    pub name: &'static str,
    /// whatsmeow's `RemotePlatform`; also decides the message id style.
    pub platform: &'static str,
}

impl Contact {
    pub fn jid(&self) -> String {
        format!("{}@s.whatsapp.net", self.phone)
    }
}

pub(super) const OWN: Contact = Contact {
    phone: OWN_PHONE,
    name: OWN_NAME,
    platform: "android",
};

pub(super) const CONTACTS: &[Contact] = &[
    Contact {
        phone: "15550001234",
        name: "Alice",
        platform: "android",
    },
    Contact {
        phone: "15550004321",
        name: "Bob",
        platform: "iphone",
    },
    Contact {
        phone: "447700900123",
        name: "Charlotte",
        platform: "iphone",
    },
    Contact {
        phone: "919876543210",
        name: "Priya 🌸",
        platform: "android",
    },
    Contact {
        phone: "5511987654321",
        name: "João",
        platform: "smba",
    },
    Contact {
        phone: "4915123456789",
        name: "Jürgen Müller",
        platform: "web",
    },
    Contact {
        phone: "15550007777",
        name: "",
        platform: "android",
    },
    Contact {
        phone: "8613800138000",
        name: "王伟",
        platform: "iphone",
    },
    Contact {
        phone: "15550002020",
        name: "Dr. O'Neil \"Doc\"",
        platform: "android",
    },
    Contact {
        phone: "971501234567",
        name: "فاطمة",
        platform: "iphone",
    },
];

pub(super) struct Group {
    pub id: &'static str,
    /// Indexes into `CONTACTS`.
    pub members: &'static [usize],
}

/// The seed's old-style `<creator>@g.us` form and two modern `120363…@g.us` ids.
pub(super) const GROUPS: &[Group] = &[
    Group {
        id: "15550009999@g.us",
        members: &[0, 1, 6],
    },
    Group {
        id: "120363025246125486@g.us",
        members: &[2, 3, 4, 5],
    },
    Group {
        id: "120363041234567890@g.us",
        members: &[0, 3, 7, 8, 9],
    },
];

pub(super) const TEXTS: &[&str] = &[
    "Hello!",
    "Hi, is the restaurant open tonight?",
    "Can I get a callback please",
    "ok",
    "👍",
    "Thanks a lot 🙏🙏",
    "*Booking* for 2 on _Friday_ at 8pm, ~window~ terrace table",
    "Line one\nline two\n\nline four",
    "Check this: https://example.com/menu?lang=en&kids=1",
    "Olá! Vocês aceitam cartão?",
    "Guten Tag, ich hätte gern eine Auskunft.",
    "مرحبا، هل يمكنني الحجز؟",
    "我想预订一个房间",
    "He said \"no\" — then left \\ weird",
    "Room 204: the AC isn't working <again>",
];

pub(super) const CAPTIONS: &[&str] = &["", "", "Invoice attached", "📷", "Here's the receipt"];

pub(super) const REACTIONS: &[&str] = &["👍", "❤️", "😂", "🙏", ""];

pub(super) const POLL_OPTIONS: &[&[&str]] = &[
    &["Red", "Green", "Blue"],
    &["Friday", "Saturday", "Sunday"],
    &["Yes", "No"],
];

pub(super) const POLL_QUESTIONS: &[&str] =
    &["Which colour?", "Which day works?", "Are you coming?"];

/// `RemotePlatform` values a call offer carries.
pub(super) const CALL_PLATFORMS: &[&str] = &["android", "iphone", "smba", "web"];

/// The long body: receivers must not truncate or choke on a few KiB.
pub(super) fn long_text() -> String {
    "All work and no play makes Jack a dull boy. ".repeat(60)
}
