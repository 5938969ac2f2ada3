//! Deterministic wabridges traffic. One seed gives one byte-identical stream, so a failing test
//! names its seed and replays.
//!
//! The stream follows a small world (contacts on different platforms, groups, open polls, group
//! events, ringing calls) so that the events agree with one another the way real ones do: a
//! `call_terminated` ends a call that rang, a vote names a poll that exists, a reconnect is
//! followed by the offline backlog between `offline_sync_preview` and `offline_sync_completed`.
//! Field values follow whatsmeow, which the event names show wabridges is built on: message
//! `type` is `text`, `media`, `poll` or `reaction`, and `media_type` the media kind.

use std::collections::VecDeque;

use bytes::Bytes;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Value, json};

mod events;

use super::world::{self, CONTACTS, GROUPS};

/// One POST body, as sent.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Position in the stream, counting duplicates.
    pub seq: u64,
    /// The `event` field, for bookkeeping without parsing.
    pub event: String,
    pub body: Bytes,
    /// A re-send of an earlier delivery's exact bytes.
    pub duplicate: bool,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("generated bodies are JSON")
    }
}

/// An endless, deterministic stream of deliveries. Use as an iterator.
pub struct Traffic {
    rng: StdRng,
    clock: u64,
    duplicate_ratio: f64,
    unknown_ratio: f64,
    polls: Vec<Poll>,
    /// (group, event message id) of events members can answer.
    group_events: Vec<(usize, String)>,
    ringing: Vec<Ringing>,
    /// Events that must come next, in order (the reconnect sequence).
    script: VecDeque<Scripted>,
    /// Recently sent deliveries, the pool duplicates are drawn from: a network failure re-sends
    /// something recent, not something from last week.
    recent: VecDeque<Delivery>,
    seq: u64,
}

/// Where something happens: a 1:1 chat with a contact, or a group (indexes into `world`).
#[derive(Debug, Clone, Copy)]
enum Chat {
    Direct(usize),
    Group(usize),
}

impl Chat {
    fn id(self) -> String {
        match self {
            Chat::Direct(c) => CONTACTS[c].jid(),
            Chat::Group(g) => GROUPS[g].id.to_string(),
        }
    }
}

struct Poll {
    chat: Chat,
    poll_id: String,
    options: &'static [&'static str],
}

struct Ringing {
    call_id: String,
    contact: usize,
    ends_at_seq: u64,
}

enum Scripted {
    /// Fully built when scheduled: connected, the sync preview and completion.
    Ready(Value),
    /// A message received while offline, with its original (earlier) timestamp.
    OfflineMessage(u64),
}

/// The seed's first example timestamp, so generated traffic sits near the examples.
const DEFAULT_START: u64 = 1_777_180_605;
const RECENT_WINDOW: usize = 32;

impl Traffic {
    pub fn new(seed: u64) -> Traffic {
        let mut traffic = Traffic {
            rng: StdRng::seed_from_u64(seed),
            clock: DEFAULT_START,
            duplicate_ratio: 0.0,
            unknown_ratio: 0.0,
            polls: Vec::new(),
            group_events: Vec::new(),
            ringing: Vec::new(),
            script: VecDeque::new(),
            recent: VecDeque::new(),
            seq: 0,
        };
        // Polls and group events created before the stream began, so votes can start at once.
        traffic.open_poll(Chat::Direct(0), 0);
        traffic.open_poll(Chat::Group(0), 1);
        for group in 1..GROUPS.len() {
            let event_id = traffic.message_id("iphone");
            traffic.group_events.push((group, event_id));
        }
        // A bridge's first deliveries are its connection and the backlog of the time it was down.
        let went_down = traffic.clock - traffic.rng.random_range(600..7200);
        traffic.schedule_reconnect(went_down);
        traffic
    }

    /// Fraction of deliveries that re-send an earlier body byte for byte (0.0 to 1.0).
    pub fn duplicate_ratio(mut self, ratio: f64) -> Traffic {
        self.duplicate_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// Fraction of deliveries whose `event` is none of the eleven documented types, as when
    /// wabridges ships a new type before the docs mention it.
    pub fn unknown_ratio(mut self, ratio: f64) -> Traffic {
        self.unknown_ratio = ratio.clamp(0.0, 1.0);
        self
    }

    /// Unix time of the first event (default: the seed's example time).
    pub fn starting_at(mut self, unix_secs: u64) -> Traffic {
        let shift = unix_secs as i64 - self.clock as i64;
        self.clock = unix_secs;
        for scripted in &mut self.script {
            if let Scripted::OfflineMessage(t) = scripted {
                *t = (*t as i64 + shift) as u64;
            }
        }
        self
    }

    fn next_delivery(&mut self) -> Delivery {
        self.seq += 1;
        if !self.recent.is_empty() && self.rng.random_bool(self.duplicate_ratio) {
            let pick = self.rng.random_range(0..self.recent.len());
            let original = &self.recent[pick];
            return Delivery {
                seq: self.seq,
                event: original.event.clone(),
                body: original.body.clone(),
                duplicate: true,
            };
        }
        self.clock += self.rng.random_range(0..25);
        let event = self.next_event();
        let delivery = Delivery {
            seq: self.seq,
            event: event["event"]
                .as_str()
                .expect("every event names itself")
                .to_string(),
            body: Bytes::from(serde_json::to_vec(&event).expect("JSON values serialise")),
            duplicate: false,
        };
        if self.recent.len() == RECENT_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(delivery.clone());
        delivery
    }

    fn next_event(&mut self) -> Value {
        if let Some(scripted) = self.script.pop_front() {
            return self.scripted(scripted);
        }
        if let Some(due) = self.ringing.iter().position(|c| c.ends_at_seq <= self.seq) {
            let call = self.ringing.swap_remove(due);
            return self.call_terminated(call);
        }
        if self.rng.random_bool(self.unknown_ratio) {
            return self.unknown_event();
        }
        // Weights: chat traffic dominates; connection churn is rare but present in any long run.
        match self.rng.random_range(0..1000) {
            0..400 => self.direct_message(false),
            400..550 => self.group_message(),
            550..610 => self.direct_message(true),
            610..750 => self.typing(),
            750..800 => self.call_incoming(),
            800..850 => self.poll_vote(),
            850..890 => self.event_response(),
            890..920 => self.new_poll(),
            920..980 => self.profile_picture_updated(),
            _ => self.disconnected(),
        }
    }

    fn scripted(&mut self, scripted: Scripted) -> Value {
        match scripted {
            Scripted::Ready(event) => event,
            Scripted::OfflineMessage(timestamp) => {
                let mut message = self.direct_message(false);
                message["timestamp"] = json!(timestamp);
                message
            }
        }
    }

    /// Queues connected → preview → the offline messages → completed: the preview's counts
    /// decide what follows, so the whole sequence is decided at once.
    fn schedule_reconnect(&mut self, went_down: u64) {
        let messages = self.rng.random_range(0..=12u64);
        let notifications = self.rng.random_range(0..=20u64);
        let receipts = self.rng.random_range(0..=40u64);
        let app_data_changes = self.rng.random_range(0..=3u64);
        let total = messages + notifications + receipts + app_data_changes;
        let mut sent_at: Vec<u64> = (0..messages)
            .map(|_| {
                self.rng
                    .random_range(went_down..self.clock.max(went_down + 1))
            })
            .collect();
        sent_at.sort_unstable();

        self.script.push_back(Scripted::Ready(
            json!({"event": "connected", "phone": world::OWN_PHONE}),
        ));
        self.script.push_back(Scripted::Ready(json!({
            "event": "offline_sync_preview", "total": total, "messages": messages,
            "notifications": notifications, "receipts": receipts,
            "app_data_changes": app_data_changes
        })));
        self.script
            .extend(sent_at.into_iter().map(Scripted::OfflineMessage));
        self.script.push_back(Scripted::Ready(
            json!({"event": "offline_sync_completed", "count": total}),
        ));
    }
}

impl Iterator for Traffic {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        Some(self.next_delivery())
    }
}
