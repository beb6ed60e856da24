//! Conversation memory: earlier runs' inputs and outputs, replayed into the next prompt stack.

use std::sync::Mutex;

use plugin_api::wire::Message;

/// Conversation memory shared by tasks: earlier runs' inputs and outputs.
#[derive(Debug, Default)]
pub struct ConversationMemory {
    max_runs: Option<usize>,
    runs: Mutex<Vec<(String, String)>>,
}

impl ConversationMemory {
    /// A memory keeping the last `max_runs` runs (all if `None`).
    pub fn new(max_runs: Option<usize>) -> Self {
        Self {
            max_runs,
            runs: Mutex::new(Vec::new()),
        }
    }

    /// The remembered turns as user/assistant messages.
    pub fn messages(&self) -> Vec<Message> {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.iter()
            .flat_map(|(i, o)| [Message::user(i.clone()), Message::assistant(o.clone())])
            .collect()
    }

    /// Remembers a run.
    pub fn add(&self, input: &str, output: &str) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        runs.push((input.to_owned(), output.to_owned()));
        if let Some(max) = self.max_runs
            && runs.len() > max
        {
            let excess = runs.len() - max;
            runs.drain(..excess);
        }
    }

    /// Number of remembered runs.
    pub fn len(&self) -> usize {
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
