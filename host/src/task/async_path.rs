//! The async path: `async_run()` and its hooks, the loop driven with awaits, and the default
//! async subtask runners (a custom sync runner runs on a blocking thread).

use std::sync::Arc;

use futures::StreamExt;
use plugin_api::wire::{EventKind, Message, PromptRequest, PromptResponse};

use super::stream::StreamAggregator;
use super::{
    ActionsSubtask, Next, PromptTask, RunContext, TaskError, TaskOutput, ValidationResult,
    all_failed, finish_actions, finish_prompt, start_actions, start_prompt,
};
use tracing::Instrument;

use crate::bridge::run_blocking;
use crate::manifest::Mode;

impl PromptTask {
    /// Runs the task on the async path: `async_before_run`, `async_try_run`, `async_after_run`.
    ///
    /// # Errors
    /// A [`TaskError`]; the finish event carries it too.
    pub async fn async_run(&self) -> Result<TaskOutput, TaskError> {
        self.require(Mode::Async, "async_run()")?;
        let span = self.task_span("async");
        let result = async {
            let ctx = self.new_context();
            self.async_before_run(&ctx).await;
            let result = self.async_try_run(&ctx).await;
            self.async_after_run(&ctx, &result).await;
            result
        }
        .instrument(span.span().clone())
        .await;
        span.finish(&result);
        result
    }

    /// Publishes the start event.
    pub async fn async_before_run(&self, ctx: &RunContext) {
        let e = self.event(
            ctx,
            EventKind::StartTask {
                input: self.input.clone(),
            },
        );
        ctx.bus.apublish_event(&e).await;
    }

    /// Publishes the finish event, remembers the run, and flushes the listener drivers.
    pub async fn async_after_run(&self, ctx: &RunContext, result: &Result<TaskOutput, TaskError>) {
        if !ctx.claim_finish() {
            return;
        }
        self.remember(result);
        let e = self.event(ctx, Self::finish_kind(result));
        ctx.bus.apublish_event(&e).await;
        ctx.bus.aflush().await;
    }

    /// The loop, driven with awaits.
    ///
    /// # Errors
    /// A [`TaskError`].
    pub async fn async_try_run(&self, ctx: &RunContext) -> Result<TaskOutput, TaskError> {
        let mut m = self.machine()?;
        let mut next = m.start();
        loop {
            ctx.check_stopped()?;
            next = match next {
                Next::Prompt(req) => m.on_response(self.prompt_async(ctx, req).await?),
                Next::Actions(sub) => {
                    self.apublish(ctx, start_actions(&sub)).await;
                    let results = match (&self.runners.async_actions, &self.runners.actions) {
                        (Some(r), _) => r(self.clone(), sub.clone()).await,
                        (None, Some(r)) => {
                            let (r, task, s) = (Arc::clone(r), self.clone(), sub.clone());
                            run_blocking(move || r(&task, &s)).await
                        }
                        (None, None) => self.async_default_run_actions_subtasks(&sub).await,
                    };
                    self.apublish(ctx, finish_actions(&sub, &results)).await;
                    m.on_actions(results)
                }
                Next::Validate(text) => {
                    let v = match (
                        &self.runners.async_output_schema,
                        &self.runners.output_schema,
                    ) {
                        (Some(r), _) => r(self.clone(), text).await,
                        // A sync runner on the async path: on a blocking thread.
                        (None, Some(r)) => {
                            let (r, task) = (Arc::clone(r), self.clone());
                            run_blocking(move || r(&task, &text)).await
                        }
                        (None, None) => {
                            self.async_default_run_output_schema_validation_subtasks(&text)
                                .await
                        }
                    };
                    m.on_validation(v)
                }
                Next::Done(out) => return Ok(out),
                Next::Fail(e) => return Err(e),
            };
        }
    }

    async fn apublish(&self, ctx: &RunContext, kind: EventKind) {
        if ctx.is_finished() {
            return;
        }
        ctx.bus.apublish_event(&self.event(ctx, kind)).await;
    }

    async fn prompt_async(
        &self,
        ctx: &RunContext,
        mut req: PromptRequest,
    ) -> Result<PromptResponse, TaskError> {
        self.apublish(ctx, start_prompt(&self.driver, &req)).await;
        let mut chat = self.chat(&mut req, "async");
        let req = &req;
        let result = if self.stream {
            match self.driver.stream(req) {
                Err(e) => Err(e.into()),
                Ok(mut s) => {
                    let mut agg = StreamAggregator::new(self.driver.plugin().id());
                    let mut failed = None;
                    while let Some(delta) = s.next().await {
                        match delta {
                            Ok(d) => {
                                if let Some(chunk) = agg.push(d) {
                                    chat.on_event(&chunk);
                                    self.apublish(ctx, chunk).await;
                                }
                            }
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    match failed {
                        Some(e) => Err(e.into()),
                        None => agg.finish(),
                    }
                }
            }
        } else {
            self.driver.prompt_async(req).await.map_err(TaskError::from)
        };
        chat.finish(&result);
        self.apublish(ctx, finish_prompt(&result)).await;
        result
    }

    /// Runs the tool calls of a subtask concurrently (the default async runner): async tools
    /// awaited together, sync-only tools on blocking threads; results in call order.
    pub async fn async_default_run_actions_subtasks(
        &self,
        subtask: &ActionsSubtask,
    ) -> Vec<Message> {
        match self.tool_set() {
            Ok(tools) => tools.run_async(subtask).await,
            Err(e) => all_failed(subtask, &e),
        }
    }

    /// Validates output text against the output schema (the default async runner; validation
    /// is CPU-only, so it runs in place).
    pub async fn async_default_run_output_schema_validation_subtasks(
        &self,
        text: &str,
    ) -> ValidationResult {
        self.default_run_output_schema_validation_subtasks(text)
    }
}
