//! The sync path: `run()` and its hooks, the loop driven with blocking calls, and the default
//! sync subtask runners.

use plugin_api::wire::{EventKind, Message, PromptRequest, PromptResponse};
use serde_json::Value;

use super::stream::StreamAggregator;
use super::{
    ActionsSubtask, Next, PromptTask, RunContext, TaskError, TaskOutput, ValidationResult,
    all_failed, finish_actions, finish_prompt, machine, start_actions, start_prompt,
};
use crate::manifest::Mode;

impl PromptTask {
    /// Runs the task on the sync path: `before_run`, `try_run`, `after_run`.
    ///
    /// # Errors
    /// A [`TaskError`]; the finish event carries it too.
    pub fn run(&self) -> Result<TaskOutput, TaskError> {
        self.require(Mode::Sync, "run()")?;
        let span = self.task_span("sync");
        let result = span.span().in_scope(|| {
            let ctx = self.new_context();
            ctx.bus.check_sync()?;
            self.before_run(&ctx)?;
            let result = self.try_run(&ctx);
            self.after_run(&ctx, &result)?;
            result
        });
        span.finish(&result);
        result
    }

    /// Publishes the start event.
    ///
    /// # Errors
    /// When the bus has an async-only listener.
    pub fn before_run(&self, ctx: &RunContext) -> Result<(), TaskError> {
        let e = self.event(
            ctx,
            EventKind::StartTask {
                input: self.input.clone(),
            },
        );
        Ok(ctx.bus.publish_event(&e)?)
    }

    /// Publishes the finish event (with the output or the error), remembers the run, and
    /// flushes the listener drivers.
    ///
    /// # Errors
    /// When the bus has an async-only listener.
    pub fn after_run(
        &self,
        ctx: &RunContext,
        result: &Result<TaskOutput, TaskError>,
    ) -> Result<(), TaskError> {
        if !ctx.claim_finish() {
            return Ok(()); // a runner stopped the run and published its finish
        }
        self.remember(result);
        let e = self.event(ctx, Self::finish_kind(result));
        let published = ctx.bus.publish_event(&e);
        ctx.bus.flush();
        Ok(published?)
    }

    /// The loop, driven with blocking calls.
    ///
    /// # Errors
    /// A [`TaskError`].
    pub fn try_run(&self, ctx: &RunContext) -> Result<TaskOutput, TaskError> {
        let mut m = self.machine()?;
        let mut next = m.start();
        loop {
            ctx.check_stopped()?;
            next = match next {
                Next::Prompt(req) => m.on_response(self.prompt_sync(ctx, req)?),
                Next::Actions(sub) => {
                    self.publish(ctx, start_actions(&sub))?;
                    let results = match &self.runners.actions {
                        Some(r) => r(self, &sub),
                        None => self.default_run_actions_subtasks(&sub),
                    };
                    self.publish(ctx, finish_actions(&sub, &results))?;
                    m.on_actions(results)
                }
                Next::Validate(text) => m.on_validation(match &self.runners.output_schema {
                    Some(r) => r(self, &text),
                    None => m.validate(&text),
                }),
                Next::Done(out) => return Ok(out),
                Next::Fail(e) => return Err(e),
            };
        }
    }

    fn publish(&self, ctx: &RunContext, kind: EventKind) -> Result<(), TaskError> {
        if ctx.is_finished() {
            return Ok(()); // stopped from outside: the run's events have ended
        }
        Ok(ctx.bus.publish_event(&self.event(ctx, kind))?)
    }

    fn prompt_sync(
        &self,
        ctx: &RunContext,
        mut req: PromptRequest,
    ) -> Result<PromptResponse, TaskError> {
        self.publish(ctx, start_prompt(&self.driver, &req))?;
        let mut chat = self.chat(&mut req, "sync");
        let req = &req;
        let result = if self.stream {
            self.driver
                .stream(req)
                .map_err(TaskError::from)
                .and_then(|s| {
                    let mut agg = StreamAggregator::new(self.driver.plugin().id());
                    for delta in s.blocking_iter() {
                        ctx.check_stopped()?;
                        if let Some(chunk) = agg.push(delta?) {
                            chat.on_event(&chunk);
                            self.publish(ctx, chunk)?;
                        }
                    }
                    agg.finish()
                })
        } else {
            self.driver.prompt(req).map_err(TaskError::from)
        };
        chat.finish(&result);
        self.publish(ctx, finish_prompt(&result))?;
        result
    }

    /// Runs the tool calls of a subtask one after the other (the default sync runner).
    pub fn default_run_actions_subtasks(&self, subtask: &ActionsSubtask) -> Vec<Message> {
        match self.tool_set() {
            Ok(tools) => tools.run_sync(subtask),
            Err(e) => all_failed(subtask, &e),
        }
    }

    /// Validates output text against the output schema (the default sync runner).
    pub fn default_run_output_schema_validation_subtasks(&self, text: &str) -> ValidationResult {
        match self.validator() {
            Ok(Some(v)) => machine::validate_with(&v, text),
            Ok(None) => Ok(Value::Null),
            Err(e) => Err(vec![e.to_string()]),
        }
    }
}
