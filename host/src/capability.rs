//! Plugin kinds, the ways of calling them, and the capability bits the ABI carries for each
//! pair. The manifest spells them (`kinds`, `[capabilities]`); the loader and the task check them.

use std::fmt;

use plugin_api::abi::Capabilities;
use serde::Deserialize;

/// A kind of plugin.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Answers prompts.
    PromptDriver,
    /// Offers activities the model can call.
    Tool,
    /// Receives events.
    EventListener,
}

impl Kind {
    /// Every kind, in display order.
    pub const ALL: [Kind; 3] = [Kind::PromptDriver, Kind::Tool, Kind::EventListener];

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PromptDriver => "prompt_driver",
            Kind::Tool => "tool",
            Kind::EventListener => "event_listener",
        }
    }

    fn shift(self) -> u32 {
        match self {
            Kind::PromptDriver => Capabilities::DRIVER_SHIFT,
            Kind::Tool => Capabilities::TOOL_SHIFT,
            Kind::EventListener => Capabilities::LISTENER_SHIFT,
        }
    }

    pub(crate) fn modes(self) -> &'static [Mode] {
        match self {
            Kind::PromptDriver => &[Mode::Sync, Mode::Async, Mode::Stream],
            Kind::Tool | Kind::EventListener => &[Mode::Sync, Mode::Async],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A way of calling a plugin.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Blocking call.
    Sync,
    /// Future.
    Async,
    /// Stream of deltas (prompt drivers only).
    Stream,
}

impl Mode {
    fn bit(self) -> u32 {
        match self {
            Mode::Sync => 1,
            Mode::Async => 2,
            Mode::Stream => 4,
        }
    }

    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
            Mode::Stream => "stream",
        }
    }
}

/// The capability bit of one kind in one mode.
pub fn capability(kind: Kind, mode: Mode) -> Capabilities {
    Capabilities(mode.bit() << kind.shift())
}

/// The kinds a capability set provides (any mode of theirs), in display order.
pub fn kinds_of(caps: Capabilities) -> Vec<Kind> {
    Kind::ALL
        .into_iter()
        .filter(|k| k.modes().iter().any(|m| caps.contains(capability(*k, *m))))
        .collect()
}

/// Renders a capability set the way a manifest spells it: `prompt_driver[sync,async] tool[sync]`.
pub fn describe_capabilities(caps: Capabilities) -> String {
    let mut parts = Vec::new();
    for kind in Kind::ALL {
        let modes: Vec<&str> = kind
            .modes()
            .iter()
            .filter(|m| caps.contains(capability(kind, **m)))
            .map(|m| m.as_str())
            .collect();
        if !modes.is_empty() {
            parts.push(format!("{kind}[{}]", modes.join(",")));
        }
    }
    let unknown = caps.0 & !Capabilities::ALL_KNOWN.0;
    if unknown != 0 {
        parts.push(format!("unknown({unknown:#x})"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}
