//! What happens in the world, one builder per kind of event. Each returns the JSON body with
//! every field of the seed's list for its type.

use rand::{Rng, rngs::StdRng, seq::IndexedRandom};
use serde_json::{Value, json};

use super::{Chat, Poll, Ringing, Traffic};
use crate::wabridges::world::{self, CONTACTS, Contact, GROUPS};

impl Traffic {
    pub(super) fn direct_message(&mut self, from_me: bool) -> Value {
        let contact = self.rng.random_range(0..CONTACTS.len());
        // whatsmeow reports the sender: ourselves when the phone's owner typed it.
        let sender = if from_me {
            world::OWN
        } else {
            CONTACTS[contact]
        };
        let content = self.content();
        self.message(sender, Chat::Direct(contact), from_me, content)
    }

    pub(super) fn group_message(&mut self) -> Value {
        let group = self.rng.random_range(0..GROUPS.len());
        let member = *GROUPS[group]
            .members
            .choose(&mut self.rng)
            .expect("groups have members");
        let content = self.content();
        self.message(CONTACTS[member], Chat::Group(group), false, content)
    }

    /// The phone's owner starts a poll; votes on it follow later.
    pub(super) fn new_poll(&mut self) -> Value {
        let chat = if self.rng.random_bool(0.5) {
            Chat::Direct(self.rng.random_range(0..CONTACTS.len()))
        } else {
            Chat::Group(self.rng.random_range(0..GROUPS.len()))
        };
        let which = self.rng.random_range(0..world::POLL_OPTIONS.len());
        let message = self.message(
            world::OWN,
            chat,
            true,
            ("poll", "", world::POLL_QUESTIONS[which].to_string()),
        );
        let poll_id = message["message_id"]
            .as_str()
            .expect("built above")
            .to_string();
        self.polls.push(Poll {
            chat,
            poll_id,
            options: world::POLL_OPTIONS[which],
        });
        message
    }

    pub(super) fn open_poll(&mut self, chat: Chat, options: usize) {
        let poll_id = self.message_id("android");
        self.polls.push(Poll {
            chat,
            poll_id,
            options: world::POLL_OPTIONS[options],
        });
    }

    fn message(
        &mut self,
        sender: Contact,
        chat: Chat,
        from_me: bool,
        (kind, media_type, body): (&str, &str, String),
    ) -> Value {
        json!({
            "event": "message", "message_id": self.message_id(sender.platform),
            "contact_id": sender.jid(), "phone": sender.phone, "chat_id": chat.id(),
            "name": sender.name, "body": body, "type": kind, "media_type": media_type,
            "is_group": matches!(chat, Chat::Group(_)), "from_me": from_me,
            "timestamp": self.clock
        })
    }

    /// (`type`, `media_type`, `body`) in whatsmeow's vocabulary; media bodies are captions.
    fn content(&mut self) -> (&'static str, &'static str, String) {
        let caption =
            |rng: &mut StdRng| world::CAPTIONS.choose(rng).expect("non-empty").to_string();
        match self.rng.random_range(0..100) {
            0..58 => (
                "text",
                "",
                world::TEXTS
                    .choose(&mut self.rng)
                    .expect("non-empty")
                    .to_string(),
            ),
            58..60 => ("text", "", world::long_text()),
            60..70 => ("media", "image", caption(&mut self.rng)),
            70..74 => ("media", "video", caption(&mut self.rng)),
            74..81 => ("media", "ptt", String::new()),
            81..83 => ("media", "audio", String::new()),
            83..88 => ("media", "document", caption(&mut self.rng)),
            88..92 => ("media", "sticker", String::new()),
            // A link preview makes whatsmeow call a text message media of kind `url`.
            92..95 => (
                "media",
                "url",
                "Our menu: https://example.com/menu".to_string(),
            ),
            95..96 => ("media", "location", String::new()),
            96..97 => ("media", "vcard", String::new()),
            _ => (
                "reaction",
                "",
                world::REACTIONS
                    .choose(&mut self.rng)
                    .expect("non-empty")
                    .to_string(),
            ),
        }
    }

    pub(super) fn typing(&mut self) -> Value {
        let (contact, chat) = if self.rng.random_bool(0.75) {
            let c = self.rng.random_range(0..CONTACTS.len());
            (c, Chat::Direct(c))
        } else {
            let g = self.rng.random_range(0..GROUPS.len());
            (
                *GROUPS[g]
                    .members
                    .choose(&mut self.rng)
                    .expect("groups have members"),
                Chat::Group(g),
            )
        };
        let state = if self.rng.random_bool(0.75) {
            "composing"
        } else {
            "paused"
        };
        let mode = if self.rng.random_bool(0.15) {
            "voice"
        } else {
            "text"
        };
        json!({
            "event": "typing", "contact_id": CONTACTS[contact].jid(), "chat_id": chat.id(),
            "state": state, "mode": mode
        })
    }

    pub(super) fn poll_vote(&mut self) -> Value {
        let poll = &self.polls[self.rng.random_range(0..self.polls.len())];
        let (chat, options, poll_id) = (poll.chat, poll.options, poll.poll_id.clone());
        let voter = match chat {
            Chat::Direct(c) => CONTACTS[c],
            Chat::Group(g) => CONTACTS[*GROUPS[g].members.choose(&mut self.rng).expect("members")],
        };
        // Mostly one choice; an empty list is a retracted vote, two a multi-select poll.
        let how_many = *[1, 1, 1, 1, 0, 2].choose(&mut self.rng).expect("non-empty");
        let selected: Vec<&str> = options
            .choose_multiple(&mut self.rng, how_many)
            .copied()
            .collect();
        json!({
            "event": "poll_vote", "contact_id": voter.jid(), "phone": voter.phone,
            "chat_id": chat.id(), "poll_id": poll_id, "message_id": self.message_id(voter.platform),
            "name": voter.name, "from_me": false, "timestamp": self.clock,
            "selected_options": selected
        })
    }

    pub(super) fn event_response(&mut self) -> Value {
        let (group, event_id) = self
            .group_events
            .choose(&mut self.rng)
            .expect("seeded")
            .clone();
        let member = CONTACTS[*GROUPS[group]
            .members
            .choose(&mut self.rng)
            .expect("members")];
        let response = *["going", "going", "not_going", "maybe"]
            .choose(&mut self.rng)
            .expect("non-empty");
        let extra_guest_count = if response == "going" {
            self.rng.random_range(0..=2u32)
        } else {
            0
        };
        json!({
            "event": "event_response", "contact_id": member.jid(), "phone": member.phone,
            "chat_id": GROUPS[group].id, "event_id": event_id,
            "message_id": self.message_id(member.platform), "name": member.name,
            "from_me": false, "timestamp": self.clock, "response": response,
            "extra_guest_count": extra_guest_count
        })
    }

    pub(super) fn call_incoming(&mut self) -> Value {
        let contact = self.rng.random_range(0..CONTACTS.len());
        let call_id = self.hex(32);
        let ends_at_seq = self.seq + self.rng.random_range(1..=12);
        self.ringing.push(Ringing {
            call_id: call_id.clone(),
            contact,
            ends_at_seq,
        });
        let platform = world::CALL_PLATFORMS
            .choose(&mut self.rng)
            .expect("non-empty");
        json!({
            "event": "call_incoming", "call_id": call_id, "contact_id": CONTACTS[contact].jid(),
            "platform": platform, "timestamp": self.clock
        })
    }

    pub(super) fn call_terminated(&mut self, call: Ringing) -> Value {
        let reason = *["hangup", "hangup", "timeout", "decline", "busy"]
            .choose(&mut self.rng)
            .expect("non-empty");
        json!({
            "event": "call_terminated", "call_id": call.call_id,
            "contact_id": CONTACTS[call.contact].jid(), "reason": reason,
            "timestamp": self.clock
        })
    }

    pub(super) fn profile_picture_updated(&mut self) -> Value {
        // The seed's `picture_id?`: a removed picture has no id.
        if self.rng.random_bool(0.1) {
            return json!({"event": "profile_picture_updated", "remove": true, "timestamp": self.clock});
        }
        let picture_id = self
            .rng
            .random_range(1_000_000_000u64..100_000_000_000)
            .to_string();
        json!({
            "event": "profile_picture_updated", "remove": false, "picture_id": picture_id,
            "timestamp": self.clock
        })
    }

    pub(super) fn disconnected(&mut self) -> Value {
        let went_down = self.clock;
        self.clock += self.rng.random_range(60..3600);
        self.schedule_reconnect(went_down);
        json!({"event": "disconnected"})
    }

    /// Types wabridges might add; shapes follow the documented ones (JIDs, unix seconds).
    pub(super) fn unknown_event(&mut self) -> Value {
        let contact = CONTACTS.choose(&mut self.rng).expect("non-empty");
        match self.rng.random_range(0..3) {
            0 => json!({
                "event": "label_added", "label_id": self.rng.random_range(1..20u32).to_string(),
                "chat_id": contact.jid(), "timestamp": self.clock
            }),
            1 => json!({
                "event": "group_participants_update", "chat_id": GROUPS[1].id,
                "participants": [contact.jid()], "action": "add", "timestamp": self.clock
            }),
            _ => json!({
                "event": "presence", "contact_id": contact.jid(),
                "available": self.rng.random_bool(0.5), "last_seen": self.clock
            }),
        }
    }

    /// Message ids in the style of the sender's client: Android `AC…` (the seed's example),
    /// iPhone `3A…`, WhatsApp Web `3EB0…`, business app plain hex.
    pub(super) fn message_id(&mut self, platform: &str) -> String {
        match platform {
            "android" => format!("AC{}", self.hex(30)),
            "iphone" => format!("3A{}", self.hex(18)),
            "web" => format!("3EB0{}", self.hex(18)),
            _ => self.hex(32),
        }
    }

    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b"0123456789ABCDEF"[self.rng.random_range(0..16)]))
            .collect()
    }
}
