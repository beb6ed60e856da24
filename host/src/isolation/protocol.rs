//! What the host and a plugin's child process say to each other: one JSON object per line, on
//! the child's stdin (host -> child) and on its original stdout (child -> host).
//!
//! Bodies are the wire JSON that already crosses the ABI, carried as strings and handed to the
//! plugin as they are; the child decodes none of them, so a process-isolated plugin sees exactly
//! the bytes an in-process one would.

use plugin_api::ErrorKind;
use plugin_api::abi::Capabilities;
use serde::{Deserialize, Serialize};

use crate::error::CallError;
use crate::manifest::Kind;
use crate::plugin::PluginInfo;

/// A message to the child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum ToChild {
    /// Make an instance of `kind` from the config JSON.
    New {
        call: u64,
        kind: Kind,
        config: String,
    },
    /// Call a method of an instance.
    Call {
        call: u64,
        instance: u64,
        method: Method,
        body: String,
    },
    /// The host dropped the future or stream of `call`: drop it in the child too.
    Cancel { call: u64 },
    /// The host dropped its last handle to `instance`.
    Release { instance: u64 },
}

/// A message from the child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum FromChild {
    /// The library passed the loader's checks and its `init` succeeded.
    Ready { info: Info },
    /// The loader refused the library; the child exits after sending this.
    Refused { message: String },
    /// An instance was made (`spec` is a tool's spec JSON).
    Created {
        call: u64,
        instance: u64,
        spec: Option<String>,
    },
    /// A call's result (for `stream`: the stream was opened, `body` is empty).
    Done {
        call: u64,
        result: Result<String, WireError>,
    },
    /// One item of a stream.
    Item {
        call: u64,
        item: Result<String, WireError>,
    },
    /// A stream ended.
    End { call: u64 },
}

/// The methods of the three instance kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Method {
    Prompt,
    PromptAsync,
    Stream,
    Call,
    CallAsync,
    Publish,
    PublishAsync,
    Flush,
    FlushAsync,
}

impl Method {
    /// Whether the plugin runs it as a blocking call (on one of the child's blocking threads).
    pub(crate) fn is_blocking(self) -> bool {
        matches!(
            self,
            Method::Prompt | Method::Call | Method::Publish | Method::Flush
        )
    }
}

/// What the library said about itself, as the child read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Info {
    pub id: String,
    pub version: String,
    pub description: String,
    pub abi_generation: u32,
    pub wire_version: u32,
    pub sdk_version: String,
    pub capabilities: u32,
    pub panic_unwind: bool,
}

impl From<&PluginInfo> for Info {
    fn from(i: &PluginInfo) -> Self {
        Self {
            id: i.id.clone(),
            version: i.version.clone(),
            description: i.description.clone(),
            abi_generation: i.abi_generation,
            wire_version: i.wire_version,
            sdk_version: i.sdk_version.clone(),
            capabilities: i.capabilities.0,
            panic_unwind: i.panic_unwind,
        }
    }
}

impl From<Info> for PluginInfo {
    fn from(i: Info) -> Self {
        Self {
            id: i.id,
            version: i.version,
            description: i.description,
            abi_generation: i.abi_generation,
            wire_version: i.wire_version,
            sdk_version: i.sdk_version,
            capabilities: Capabilities(i.capabilities),
            panic_unwind: i.panic_unwind,
        }
    }
}

/// A [`CallError`] on the wire; the host puts back the plugin id and the operation it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub kind: u32,
    pub retryable: bool,
    pub message: String,
}

impl From<CallError> for WireError {
    fn from(e: CallError) -> Self {
        Self {
            kind: e.kind.code(),
            retryable: e.retryable,
            message: e.message,
        }
    }
}

impl WireError {
    pub(crate) fn into_call_error(self, plugin: &str, operation: &'static str) -> CallError {
        CallError {
            plugin: plugin.to_owned(),
            operation,
            kind: ErrorKind::from_code(self.kind),
            retryable: self.retryable,
            message: self.message,
        }
    }
}

/// One message as a line of JSON.
pub(crate) fn line<T: Serialize>(message: &T) -> String {
    // Messages hold only strings, integers and enums, so this cannot fail; were it to, the
    // other side refuses `{}` as a protocol error rather than waiting forever.
    let mut s = serde_json::to_string(message).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_each_and_round_trip() {
        let m = ToChild::Call {
            call: 7,
            instance: 2,
            method: Method::PromptAsync,
            body: "{\"messages\":[{\"content\":\"a\\nb\"}]}".into(),
        };
        let l = line(&m);
        assert_eq!(l.matches('\n').count(), 1, "{l}");
        let back: ToChild = serde_json::from_str(&l).unwrap();
        assert!(matches!(
            back,
            ToChild::Call {
                call: 7,
                method: Method::PromptAsync,
                ..
            }
        ));
        let r = FromChild::Done {
            call: 7,
            result: Err(WireError {
                kind: ErrorKind::Timeout.code(),
                retryable: true,
                message: "slow".into(),
            }),
        };
        let back: FromChild = serde_json::from_str(&line(&r)).unwrap();
        let FromChild::Done { result: Err(e), .. } = back else {
            panic!("{back:?}")
        };
        let e = e.into_call_error("p", "prompt_async");
        assert_eq!((e.kind, e.retryable), (ErrorKind::Timeout, true));
    }
}
