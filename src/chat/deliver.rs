//! One message in its user's turn: the lease, the user's agent, the send,
//! the polls until the message ends, and one replacement of an agent found
//! gone.

use serde_json::Value;
use tokio::time::Instant;

use super::agents::phase;
use super::run::{Progress, ProgressCell, gave_up};
use super::{ChatAnswer, ChatEvent, ChatRequest, CompletedMessage, Inner};
use crate::agent_service::{Poll, Sent, poll};
use crate::context::RequestContext;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::ids::{AgentId, UserNumber};
use crate::mapping::lease::Lease;
use crate::metrics;
use crate::spans::Kind;

enum Attempt {
    Answered(ChatAnswer),
    AgentGone,
}

impl Inner {
    /// Runs while holding the user's lane; `deadline` is the caller's.
    pub(super) async fn chat_in_turn(
        &self,
        ctx: &RequestContext,
        req: ChatRequest,
        deadline: Instant,
        progress: &ProgressCell,
    ) -> GatewayResult<ChatAnswer> {
        let mut span = phase(ctx, "chat.lease", Kind::Internal, &req.user);
        let lease = self
            .leases
            .acquire(&req.user, deadline, self)
            .await
            .inspect_err(|_| span.fail())?;
        drop(span);
        let result = self.converse(ctx, &req, &lease, deadline, progress).await;
        lease.release().await;
        result
    }

    async fn converse(
        &self,
        ctx: &RequestContext,
        req: &ChatRequest,
        lease: &Lease,
        deadline: Instant,
        progress: &ProgressCell,
    ) -> GatewayResult<ChatAnswer> {
        let agent = self.agent_for(ctx, &req.user).await?;
        if let Attempt::Answered(v) = self
            .attempt(ctx, &agent, req, lease, deadline, progress)
            .await?
        {
            return Ok(v);
        }
        tracing::info!(user = %req.user.masked(), agent = %agent, "Stored agent is gone from the agent service; replacing it.");
        let agent = self.heal(ctx, &req.user, &agent).await?;
        match self
            .attempt(ctx, &agent, req, lease, deadline, progress)
            .await?
        {
            Attempt::Answered(v) => Ok(v),
            // Once only: a second disappearance is reported, not chased.
            Attempt::AgentGone => Err(GatewayError::agent_service(
                "the agent vanished again right after it was replaced",
            )),
        }
    }

    /// Sends the message unless the caller has already stopped waiting, and
    /// polls it until it ends or `max_processing` after the send, whether
    /// or not the caller still waits.
    async fn attempt(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        req: &ChatRequest,
        lease: &Lease,
        deadline: Instant,
        progress: &ProgressCell,
    ) -> GatewayResult<Attempt> {
        if Instant::now() >= deadline {
            // The caller has its 504; a message sent now would be answered
            // to nobody and could overlap the one it retries with.
            return Err(gave_up());
        }
        if !lease.sending(agent).await? {
            // Taken over while this process could not renew it: another
            // replica has the turn, and a message from here could overlap.
            return Err(GatewayError::new(
                ErrorKind::UserBusy,
                "this user's turn passed to another replica; send the message again",
            )
            .retry_after(1));
        }
        progress.set(Progress::Sending);
        ctx.set_deadline(deadline.into_std());
        let processing_deadline = Instant::now() + self.max_processing;
        let emit = |event: ChatEvent| {
            if let ChatEvent::Sent(id) = &event {
                if matches!(progress.get(), Progress::Sent(known) if &known == id) {
                    return;
                }
                progress.set(Progress::Sent(id.clone()));
            }
            if let Some(events) = &req.events {
                // The receiver is gone when the client left: nothing to do.
                let _ = events.send(event);
            }
        };
        // The stream carries the whole answer; a send only its acceptance.
        let name = match &req.events {
            Some(_) => "chat.stream",
            None => "chat.send",
        };
        let mut span = phase(ctx, name, Kind::Client, &req.user);
        if span.is_recording() {
            span.set("eai.agent_id", agent.to_string());
        }
        let send_ctx = ctx.under(&span);
        let sent = match &req.events {
            Some(_) => {
                self.agents
                    .send_streaming(
                        &send_ctx,
                        agent,
                        &req.message,
                        req.metadata.as_ref(),
                        self.max_processing,
                        &emit,
                    )
                    .await
            }
            None => {
                self.agents
                    .send(
                        &send_ctx,
                        agent,
                        &req.message,
                        req.metadata.as_ref(),
                        self.max_processing,
                    )
                    .await
            }
        };
        if sent.is_err() {
            span.fail();
        }
        drop(span);
        // Streamed: the messages have reached the events already.
        let streamed = matches!(sent, Ok(Sent::Streamed(_)));
        let (id, finished) = match sent {
            Ok(Sent::Accepted(id) | Sent::Streamed(id)) => {
                lease.sent(&id).await;
                let _tracked = self.in_progress.track(agent, &id);
                let finished = self
                    .follow(ctx, agent, &req.user, &id, processing_deadline, &emit)
                    .await?;
                (id, finished)
            }
            // Synchronous delivery: answered without a single poll.
            Ok(Sent::Answered { id, outcome }) => {
                emit(ChatEvent::Sent(id.clone()));
                (id, poll::Finished { outcome, polls: 0 })
            }
            Ok(Sent::AgentGone) => {
                progress.set(Progress::Preparing);
                return Ok(Attempt::AgentGone);
            }
            Err(e) => {
                if e.kind == ErrorKind::PollTimeout {
                    self.abandon(ctx, agent, &req.user, None).await;
                }
                return Err(e);
            }
        };
        if let (Poll::Completed(data), false) = (&finished.outcome, streamed) {
            // Not streamed by the agent service: the messages as one batch.
            for message in data
                .get("messages")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                emit(ChatEvent::Message(message.clone()));
            }
        }
        metrics::CHAT_POLLS.observe(f64::from(finished.polls));
        match finished.outcome {
            Poll::Completed(data) => Ok(Attempt::Answered(ChatAnswer {
                response: CompletedMessage {
                    status: "completed",
                    message_id: id,
                    data,
                },
            })),
            Poll::Failed(reason) => Err(GatewayError::agent_service(reason).with_message_id(id)),
            Poll::AgentGone => {
                progress.set(Progress::Preparing);
                Ok(Attempt::AgentGone)
            }
            Poll::Pending => Err(GatewayError::new(
                ErrorKind::Internal,
                "poll ended while pending",
            )),
        }
    }

    /// Polls a delivered message until it ends or `processing_deadline`.
    async fn follow(
        &self,
        ctx: &RequestContext,
        agent: &AgentId,
        user: &UserNumber,
        id: &str,
        processing_deadline: Instant,
        emit: &(dyn Fn(ChatEvent) + Sync),
    ) -> GatewayResult<poll::Finished> {
        emit(ChatEvent::Sent(id.to_owned()));
        let polled = poll::until_done(
            ctx,
            self.agents.as_ref(),
            agent,
            id,
            &self.poll,
            processing_deadline,
        )
        .await;
        if let Err(e) = &polled
            && e.kind == ErrorKind::PollTimeout
        {
            self.abandon(ctx, agent, user, Some(id)).await;
        }
        polled.map_err(|e| e.with_message_id(id.to_owned()))
    }
}
