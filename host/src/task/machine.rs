//! The task loop's decisions, with no I/O: a state machine that says what to do next, given a
//! driver response, a subtask's tool results or a validation outcome. The sync and async
//! runners in [`super`] drive it and make no decision of their own.
//!
//! The whole run state is in [`Machine`] and serialises to JSON, so a run can be saved between
//! any two steps and resumed elsewhere: [`Machine::pending`] says what a resumed machine waits
//! for. What it waits for is explicit ([`Awaiting`]); feeding it anything else ends the run with
//! [`TaskError::Internal`] instead of corrupting it.
//!
//! (Over 600 lines because its unit tests, a third of it, sit next to the decisions they test.)

use std::sync::{Arc, OnceLock};

use plugin_api::wire::WIRE_VERSION;
use plugin_api::wire::{FunctionSpec, Message, PromptRequest, PromptResponse, Role, Usage};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ActionsSubtask, TaskError, TaskOutput, ValidationResult};

/// What the runner must do next.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Next {
    /// Call the driver with this request and hand the response to [`Machine::on_response`].
    Prompt(PromptRequest),
    /// Run these tool calls and hand the results to [`Machine::on_actions`].
    Actions(ActionsSubtask),
    /// Validate this text against the output schema and hand the outcome to
    /// [`Machine::on_validation`].
    Validate(String),
    /// The run succeeded.
    Done(TaskOutput),
    /// The run failed.
    Fail(TaskError),
}

/// What a machine is waiting for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "awaiting", rename_all = "snake_case")]
pub enum Awaiting {
    /// Nothing has happened: call [`Machine::start`].
    Start,
    /// The driver's response to [`Machine::request`].
    Response,
    /// The results of these tool calls.
    Actions {
        /// The subtask being run.
        subtask: ActionsSubtask,
    },
    /// The outcome of validating this text.
    Validation {
        /// The model's answer.
        text: String,
    },
    /// The run has ended (done or failed).
    Ended,
}

impl Awaiting {
    fn name(&self) -> &'static str {
        match self {
            Awaiting::Start => "start",
            Awaiting::Response => "a driver response",
            Awaiting::Actions { .. } => "tool results",
            Awaiting::Validation { .. } => "a validation outcome",
            Awaiting::Ended => "nothing (the run has ended)",
        }
    }
}

/// A run's settings, fixed when it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// The task's id (subtask ids derive from it; drivers get it in each request).
    pub task_id: String,
    /// The functions offered to the model (`<Tool>_<activity>`).
    pub functions: Vec<FunctionSpec>,
    /// The JSON Schema the final answer must satisfy.
    pub output_schema: Option<Value>,
    /// How many subtasks (tool rounds plus validation retries) the run may take.
    pub max_subtasks: usize,
    /// After tool calls, prompt the model again (true) or end with the tool results (false).
    pub reflect_on_tool_use: bool,
    /// Functions the caller runs itself (among `functions`): a turn that calls one ends the run
    /// with its calls in [`TaskOutput::tool_calls`] (the OpenAI front's client tools).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_functions: Vec<String>,
}

/// The output schema, compiled once and shared; rebuilt on demand after deserialisation.
#[derive(Clone, Default)]
struct Compiled(OnceLock<Result<Arc<jsonschema::Validator>, String>>);

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "compiled"
        } else {
            "pending"
        })
    }
}

/// Compiles an output schema.
///
/// # Errors
/// [`TaskError::InvalidOutputSchema`] when it is not a valid JSON Schema.
pub fn compile_schema(schema: &Value) -> Result<Arc<jsonschema::Validator>, TaskError> {
    jsonschema::validator_for(schema)
        .map(Arc::new)
        .map_err(|e| TaskError::InvalidOutputSchema(e.to_string()))
}

/// The state of one run: the prompt stack so far, the subtasks and usage counted, and what it
/// waits for. See the module docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    config: MachineConfig,
    messages: Vec<Message>,
    subtasks: usize,
    usage: Usage,
    awaiting: Awaiting,
    /// The last response's finish reason.
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(skip)]
    validator: Compiled,
}

impl Machine {
    /// A machine about to start, with the opening prompt stack (rules, memory, the input).
    ///
    /// # Errors
    /// [`TaskError::InvalidOutputSchema`] when the output schema does not compile.
    pub fn new(config: MachineConfig, messages: Vec<Message>) -> Result<Self, TaskError> {
        match &config.output_schema {
            Some(schema) => {
                let validator = compile_schema(schema)?;
                Ok(Self::with_compiled_schema(config, messages, validator))
            }
            None => Ok(Self {
                config,
                messages,
                subtasks: 0,
                usage: Usage::default(),
                awaiting: Awaiting::Start,
                finish_reason: None,
                validator: Compiled::default(),
            }),
        }
    }

    /// [`Machine::new`] with the output schema already compiled (a task compiles its schema
    /// once for all its runs): `validator` must be `config.output_schema`'s.
    pub fn with_compiled_schema(
        config: MachineConfig,
        messages: Vec<Message>,
        validator: Arc<jsonschema::Validator>,
    ) -> Self {
        let compiled = Compiled::default();
        let _ = compiled.0.set(Ok(validator));
        Self {
            config,
            messages,
            subtasks: 0,
            usage: Usage::default(),
            awaiting: Awaiting::Start,
            finish_reason: None,
            validator: compiled,
        }
    }

    /// The run's settings.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// The prompt stack so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Token usage over the driver calls so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Subtasks counted so far.
    pub fn subtasks(&self) -> usize {
        self.subtasks
    }

    /// What the machine waits for.
    pub fn awaiting(&self) -> &Awaiting {
        &self.awaiting
    }

    /// Begins the run: the first prompt.
    pub fn start(&mut self) -> Next {
        if self.awaiting != Awaiting::Start {
            return self.out_of_order("start");
        }
        self.prompt()
    }

    /// The step a machine (resumed, say) waits for: `None` before [`Machine::start`] and after
    /// the end.
    pub fn pending(&self) -> Option<Next> {
        match &self.awaiting {
            Awaiting::Start | Awaiting::Ended => None,
            Awaiting::Response => Some(Next::Prompt(self.request())),
            Awaiting::Actions { subtask } => Some(Next::Actions(subtask.clone())),
            Awaiting::Validation { text } => Some(Next::Validate(text.clone())),
        }
    }

    /// The request for the driver: the prompt stack, the functions and the output schema.
    pub fn request(&self) -> PromptRequest {
        PromptRequest {
            schema_version: WIRE_VERSION,
            messages: self.messages.clone(),
            tools: self.config.functions.clone(),
            output_schema: self.config.output_schema.clone(),
            task_id: Some(self.config.task_id.clone()),
            traceparent: None,
        }
    }

    /// The driver answered: tool calls become a subtask, text is validated (with an output
    /// schema) or is the output.
    pub fn on_response(&mut self, resp: PromptResponse) -> Next {
        if self.awaiting != Awaiting::Response {
            return self.out_of_order("a driver response");
        }
        self.usage.add(resp.usage);
        self.finish_reason = resp.finish_reason;
        let mut message = resp.message;
        message.role = Role::Assistant;
        let calls = message.tool_calls.clone();
        let text = message.content.clone();
        self.messages.push(message);
        let client: Vec<_> = calls
            .iter()
            .filter(|c| self.config.client_functions.contains(&c.name))
            .cloned()
            .collect();
        if !client.is_empty() {
            // The caller runs these: the run ends here with them (a server call in the same
            // turn is not run; the front refuses tasks that mix the two kinds).
            self.finish_reason = Some(plugin_api::wire::finish_reason::TOOL_CALLS.to_owned());
            let mut next = self.done(text, None);
            if let Next::Done(out) = &mut next {
                out.tool_calls = client;
            }
            return next;
        }
        if !calls.is_empty() {
            if let Some(fail) = self.count_subtask(Vec::new()) {
                return fail;
            }
            let subtask = ActionsSubtask {
                id: format!("{}-{}", self.config.task_id, self.subtasks),
                calls,
            };
            self.awaiting = Awaiting::Actions {
                subtask: subtask.clone(),
            };
            return Next::Actions(subtask);
        }
        if self.config.output_schema.is_some() {
            self.awaiting = Awaiting::Validation { text: text.clone() };
            return Next::Validate(text);
        }
        self.done(text, None)
    }

    /// The subtask's tool results (one per call, in call order): prompt again, or end with
    /// the results when `reflect_on_tool_use` is off.
    pub fn on_actions(&mut self, results: Vec<Message>) -> Next {
        if !matches!(self.awaiting, Awaiting::Actions { .. }) {
            return self.out_of_order("tool results");
        }
        let joined = results
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        self.messages.extend(results);
        if self.config.reflect_on_tool_use {
            self.prompt()
        } else {
            self.done(joined, None)
        }
    }

    /// The validation outcome of the text it asked to validate: done with the JSON, or another
    /// prompt that lists the errors (a subtask).
    pub fn on_validation(&mut self, result: ValidationResult) -> Next {
        let Awaiting::Validation { text } = &self.awaiting else {
            return self.out_of_order("a validation outcome");
        };
        let text = text.clone();
        match result {
            Ok(json) => self.done(text, Some(json)),
            Err(errors) => {
                if let Some(fail) = self.count_subtask(errors.clone()) {
                    return fail;
                }
                self.messages.push(Message::user(format!(
                    "Your answer must be JSON that satisfies the output schema. Fix these errors and answer again \
                     with the JSON only:\n- {}",
                    errors.join("\n- ")
                )));
                self.prompt()
            }
        }
    }

    /// Validates `text` against the output schema (JSON, optionally in a ```json fence).
    /// Without a schema, anything is valid.
    pub fn validate(&self, text: &str) -> ValidationResult {
        let Some(schema) = &self.config.output_schema else {
            return Ok(Value::Null);
        };
        let compiled = self
            .validator
            .0
            .get_or_init(|| compile_schema(schema).map_err(|e| e.to_string()));
        match compiled {
            Ok(v) => validate_with(v, text),
            Err(e) => Err(vec![format!("invalid output schema: {e}")]),
        }
    }

    fn prompt(&mut self) -> Next {
        self.awaiting = Awaiting::Response;
        Next::Prompt(self.request())
    }

    fn done(&mut self, text: String, json: Option<Value>) -> Next {
        self.awaiting = Awaiting::Ended;
        Next::Done(TaskOutput {
            text,
            json,
            usage: self.usage,
            subtasks: self.subtasks,
            tool_calls: Vec::new(),
            finish_reason: self.finish_reason.clone(),
        })
    }

    /// Counts a subtask; `Some(fail)` when over the limit.
    fn count_subtask(&mut self, last_errors: Vec<String>) -> Option<Next> {
        self.subtasks += 1;
        if self.subtasks <= self.config.max_subtasks {
            return None;
        }
        self.awaiting = Awaiting::Ended;
        Some(Next::Fail(TaskError::MaxSubtasks {
            limit: self.config.max_subtasks,
            last_errors,
        }))
    }

    fn out_of_order(&mut self, got: &str) -> Next {
        let message = format!(
            "the task loop got {got} while it awaited {}",
            self.awaiting.name()
        );
        self.awaiting = Awaiting::Ended;
        Next::Fail(TaskError::Internal(message))
    }
}

/// Validates `text` with a compiled output schema.
pub fn validate_with(validator: &jsonschema::Validator, text: &str) -> ValidationResult {
    let value: Value = serde_json::from_str(strip_fences(text))
        .map_err(|e| vec![format!("not valid JSON: {e}")])?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("at `{}`: {e}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors)
    }
}

/// The text inside a ```json fence, if the model wrapped its answer in one.
fn strip_fences(text: &str) -> &str {
    let t = text.trim();
    t.strip_prefix("```json")
        .or_else(|| t.strip_prefix("```"))
        .and_then(|rest| rest.strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use plugin_api::wire::ToolCall;
    use serde_json::json;

    use super::*;

    fn config(max_subtasks: usize) -> MachineConfig {
        MachineConfig {
            task_id: "t".into(),
            functions: Vec::new(),
            output_schema: None,
            max_subtasks,
            reflect_on_tool_use: true,
            client_functions: Vec::new(),
        }
    }

    fn machine(config: MachineConfig) -> Machine {
        Machine::new(config, vec![Message::user("hi")]).unwrap()
    }

    fn text(t: &str, tokens: u64) -> PromptResponse {
        let mut r = PromptResponse::text(t, Usage::default());
        r.usage.output_tokens = tokens;
        r
    }

    fn calls(n: usize) -> PromptResponse {
        let mut r = text("", 1);
        r.message.tool_calls = (0..n)
            .map(|i| ToolCall {
                id: format!("c{i}"),
                name: "T_a".into(),
                arguments: json!({}),
            })
            .collect();
        r
    }

    fn results(sub: &ActionsSubtask) -> Vec<Message> {
        sub.calls
            .iter()
            .map(|c| Message::tool_result(c.id.clone(), format!("r-{}", c.id), false))
            .collect()
    }

    fn prompt(next: Next) -> PromptRequest {
        match next {
            Next::Prompt(r) => r,
            other => panic!("expected a prompt, got {other:?}"),
        }
    }

    fn actions(next: Next) -> ActionsSubtask {
        match next {
            Next::Actions(s) => s,
            other => panic!("expected actions, got {other:?}"),
        }
    }

    fn done(next: Next) -> TaskOutput {
        match next {
            Next::Done(o) => o,
            other => panic!("expected done, got {other:?}"),
        }
    }

    #[test]
    fn a_text_answer_ends_the_run_with_its_usage() {
        let mut m = machine(config(3));
        let req = prompt(m.start());
        assert_eq!(req.task_id.as_deref(), Some("t"));
        assert_eq!(req.messages.len(), 1);
        let out = done(m.on_response(text("hello", 5)));
        assert_eq!(
            (out.text.as_str(), out.usage.output_tokens, out.subtasks),
            ("hello", 5, 0)
        );
        assert_eq!(m.awaiting(), &Awaiting::Ended);
    }

    #[test]
    fn tool_calls_become_a_subtask_and_the_results_go_back_to_the_model() {
        let mut m = machine(config(3));
        m.start();
        let sub = actions(m.on_response(calls(2)));
        assert_eq!(sub.id, "t-1");
        assert_eq!(sub.calls.len(), 2);
        let req = prompt(m.on_actions(results(&sub)));
        let roles: Vec<Role> = req.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant, Role::Tool, Role::Tool]);
        let out = done(m.on_response(text("answer", 2)));
        assert_eq!((out.subtasks, out.usage.output_tokens), (1, 3));
    }

    #[test]
    fn max_subtasks_bounds_tool_rounds() {
        let mut m = machine(config(2));
        m.start();
        for _ in 0..2 {
            let sub = actions(m.on_response(calls(1)));
            prompt(m.on_actions(results(&sub)));
        }
        match m.on_response(calls(1)) {
            Next::Fail(TaskError::MaxSubtasks {
                limit: 2,
                last_errors,
            }) => {
                assert!(last_errors.is_empty())
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.awaiting(), &Awaiting::Ended);
        // A zero limit refuses the first tool round.
        let mut m = machine(config(0));
        m.start();
        assert!(matches!(
            m.on_response(calls(1)),
            Next::Fail(TaskError::MaxSubtasks { .. })
        ));
    }

    #[test]
    fn a_call_of_a_client_function_ends_the_run_with_the_calls() {
        let mut m = machine(MachineConfig {
            client_functions: vec!["T_a".into()],
            ..config(3)
        });
        m.start();
        let mut r = calls(2);
        r.finish_reason = Some("tool_calls".into());
        let out = done(m.on_response(r));
        assert_eq!(out.tool_calls.len(), 2);
        assert_eq!(out.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(out.subtasks, 0, "the caller runs them: no subtask here");
        assert_eq!(m.awaiting(), &Awaiting::Ended);
        let mut plain = machine(config(3));
        plain.start();
        let mut r = text("hi", 1);
        r.finish_reason = Some("length".into());
        assert_eq!(
            done(plain.on_response(r)).finish_reason.as_deref(),
            Some("length")
        );
    }

    #[test]
    fn with_reflection_off_the_tool_results_are_the_output() {
        let mut m = machine(MachineConfig {
            reflect_on_tool_use: false,
            ..config(3)
        });
        m.start();
        let sub = actions(m.on_response(calls(2)));
        let out = done(m.on_actions(results(&sub)));
        assert_eq!(out.text, "r-c0\nr-c1");
        assert_eq!(out.subtasks, 1);
    }

    #[test]
    fn validation_failures_are_retried_with_the_errors_until_the_limit() {
        let schema = json!({"type": "object", "required": ["n"]});
        let mut m = machine(MachineConfig {
            output_schema: Some(schema),
            ..config(1)
        });
        m.start();
        let Next::Validate(t) = m.on_response(text("{\"x\": 1}", 1)) else {
            panic!()
        };
        let v = m.validate(&t);
        let errors = v.clone().unwrap_err();
        assert!(
            errors[0].contains("\"n\" is a required property"),
            "{errors:?}"
        );
        let req = prompt(m.on_validation(v));
        let last = req.messages.last().unwrap();
        assert!(last.content.contains("Fix these errors") && last.content.contains("\"n\""));
        // A fenced answer is valid JSON.
        let Next::Validate(t) = m.on_response(text("```json\n{\"n\": 2}\n```", 1)) else {
            panic!()
        };
        let out = done(m.on_validation(m.validate(&t)));
        assert_eq!(out.json, Some(json!({"n": 2})));
        assert_eq!(out.text, "```json\n{\"n\": 2}\n```");
        assert_eq!(out.subtasks, 1);

        // Over the limit: the last errors travel with the failure.
        let mut m = machine(MachineConfig {
            output_schema: Some(json!({"type": "object"})),
            ..config(0)
        });
        m.start();
        let Next::Validate(t) = m.on_response(text("not json", 1)) else {
            panic!()
        };
        match m.on_validation(m.validate(&t)) {
            Next::Fail(TaskError::MaxSubtasks { last_errors, .. }) => {
                assert!(
                    last_errors[0].starts_with("not valid JSON"),
                    "{last_errors:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_invalid_output_schema_is_refused_up_front() {
        let e = Machine::new(
            MachineConfig {
                output_schema: Some(json!({"type": 12})),
                ..config(1)
            },
            Vec::new(),
        )
        .unwrap_err();
        assert!(matches!(e, TaskError::InvalidOutputSchema(_)), "{e}");
    }

    #[test]
    fn steps_out_of_order_end_the_run_with_an_internal_error() {
        let mut m = machine(config(3));
        match m.on_actions(Vec::new()) {
            Next::Fail(TaskError::Internal(msg)) => {
                assert_eq!(msg, "the task loop got tool results while it awaited start")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(m.start(), Next::Fail(TaskError::Internal(_))));
        let mut m = machine(config(3));
        m.start();
        assert!(matches!(
            m.on_validation(Ok(Value::Null)),
            Next::Fail(TaskError::Internal(_))
        ));
    }

    #[test]
    fn a_run_saved_between_steps_resumes_where_it_was() {
        let schema = json!({"type": "object"});
        let mut m = machine(MachineConfig {
            output_schema: Some(schema),
            ..config(3)
        });
        m.start();
        let sub = actions(m.on_response(calls(2)));
        let saved = serde_json::to_string(&m).unwrap();

        let mut resumed: Machine = serde_json::from_str(&saved).unwrap();
        assert_eq!(resumed.awaiting(), m.awaiting());
        assert_eq!(actions(resumed.pending().unwrap()).calls, sub.calls);
        for machine in [&mut m, &mut resumed] {
            prompt(machine.on_actions(results(&sub)));
            let Next::Validate(t) = machine.on_response(text("{}", 4)) else {
                panic!()
            };
            // The resumed machine compiles its schema again on first use.
            let out = done(machine.on_validation(machine.validate(&t)));
            assert_eq!(
                (out.subtasks, out.usage.output_tokens, out.json),
                (1, 5, Some(json!({})))
            );
        }
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::to_value(&resumed).unwrap()
        );
    }
}
