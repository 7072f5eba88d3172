//! A chat's task and its caller's wait, the two clocks of the module
//! comment: the task runs from the user's lane to the message's end; the
//! caller waits for the answer up to its deadline, then gets a 504 that
//! names the message, from the progress the task shares with it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{ChatAnswer, ChatRequest, ChatService};
use crate::context::RequestContext;
use crate::error::{ErrorKind, GatewayError, GatewayResult};
use crate::spans::{Kind, Parent};

impl ChatService {
    /// Runs one chat to its answer, or to the caller's deadline (504 with
    /// the message id when it was sent). Everything from the user's lane on
    /// runs in a task of its own (see the module comment).
    pub async fn chat(&self, ctx: RequestContext, req: ChatRequest) -> GatewayResult<ChatAnswer> {
        self.start(ctx, req)?.answer().await
    }

    /// When a caller asking for `timeout` stops waiting.
    pub fn deadline_for(&self, timeout: Option<Duration>) -> Instant {
        let budget = timeout.map_or(self.inner.budget, |t| t.min(self.inner.budget));
        Instant::now() + budget
    }

    /// Queues the chat in its user's lane and starts its task; the caller
    /// then waits for its answer (`ChatRun::answer`) or for its end
    /// (`ChatRun::outcome`). Refused (429) when the user's queue is full.
    pub fn start(&self, ctx: RequestContext, req: ChatRequest) -> GatewayResult<ChatRun> {
        let deadline = self.deadline_for(req.timeout);
        let ticket = self
            .inner
            .lanes
            .enqueue(&req.user, self.inner.max_queued)
            .map_err(|_| {
                GatewayError::new(
                    ErrorKind::UserQueueFull,
                    "too many messages of this user are waiting for an answer",
                )
                .retry_after(1)
            })?;
        let inner = self.inner.clone();
        let ctx_span = ctx.span_parent().cloned();
        let running = inner.running.enter();
        let progress = ProgressCell::default();
        let watched = progress.clone();
        let task = tokio::spawn(async move {
            let _running = running;
            let mut span = super::agents::phase(&ctx, "chat.lane_wait", Kind::Internal, &req.user);
            let _lane = tokio::time::timeout_at(deadline, ticket.wait())
                .await
                .map_err(|_| {
                    span.fail();
                    GatewayError::new(
                        ErrorKind::PollTimeout,
                        "earlier messages of this user are still being answered",
                    )
                })?;
            drop(span);
            let result = inner.chat_in_turn(&ctx, req, deadline, &progress).await;
            if progress.abandoned_by_caller() {
                // The caller has had its 504; this is the only trace left.
                tracing::info!(
                    request_id = %ctx.id,
                    outcome = match &result {
                        Ok(_) => "answered",
                        Err(e) => e.kind.label(),
                    },
                    "Message finished after its caller stopped waiting."
                );
            }
            result
        });
        Ok(ChatRun {
            task,
            progress: watched,
            deadline,
            span: ctx_span,
        })
    }
}

/// A chat whose task has started.
pub struct ChatRun {
    task: tokio::task::JoinHandle<GatewayResult<ChatAnswer>>,
    progress: ProgressCell,
    deadline: Instant,
    /// The request's span, for the span of a completion the caller no
    /// longer waits for.
    span: Option<Parent>,
}

impl ChatRun {
    /// The answer, or at the caller's deadline a 504 that names the message
    /// if it was sent; the chat goes on either way.
    pub async fn answer(mut self) -> GatewayResult<ChatAnswer> {
        let joined = match tokio::time::timeout_at(self.deadline, &mut self.task).await {
            Ok(joined) => joined,
            // Finished on the deadline itself: the answer still counts.
            Err(_) if self.task.is_finished() => self.task.await,
            Err(_) => {
                let gave_up = self.progress.gave_up().await;
                self.follow_in_background();
                return Err(gave_up);
            }
        };
        Self::joined(joined)
    }

    /// With spans on, a span from the caller's 504 to the message's end;
    /// otherwise the task simply goes on alone.
    fn follow_in_background(self) {
        let Some(parent) = self.span else {
            return;
        };
        let mut span = parent.child("chat.background", Kind::Internal);
        let task = self.task;
        tokio::spawn(async move {
            let ended = Self::joined(task.await);
            span.set(
                "eai.outcome",
                match &ended {
                    Ok(_) => "answered",
                    Err(e) => e.kind.label(),
                },
            );
            if ended.is_err() {
                span.fail();
            }
        });
    }

    /// How the chat ended, however long that takes (up to
    /// `chat.max_processing_seconds` after the send).
    pub async fn outcome(self) -> GatewayResult<ChatAnswer> {
        Self::joined(self.task.await)
    }

    /// Follows the chat from elsewhere (a second waiter).
    pub fn watch(&self) -> ChatWatch {
        ChatWatch(self.progress.clone())
    }

    /// The caller's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    fn joined(
        joined: Result<GatewayResult<ChatAnswer>, tokio::task::JoinError>,
    ) -> GatewayResult<ChatAnswer> {
        joined.unwrap_or_else(|e| {
            tracing::error!(error = %e, "Chat task failed.");
            Err(GatewayError::new(ErrorKind::Internal, "internal error"))
        })
    }
}

/// How far a chat has come, for a caller that waits for it elsewhere.
#[derive(Clone)]
pub struct ChatWatch(ProgressCell);

impl ChatWatch {
    /// Whether the message may have reached the agent.
    pub fn delivery_started(&self) -> bool {
        self.0.get() != Progress::Preparing
    }

    /// The 504 for a caller whose wait ran out (see `ChatRun::answer`).
    pub async fn gave_up(&self) -> GatewayError {
        self.0.gave_up().await
    }
}

/// How far a chat's task has come, shared with its caller. A plain cell,
/// not a channel: every chat in flight holds one (a tokio watch channel
/// costs about 450 bytes, 4 MB per 10,000 chats), and the caller reads it
/// only when its wait runs out.
#[derive(Clone, Default)]
pub(super) struct ProgressCell(Arc<Mutex<Progress>>);

impl ProgressCell {
    pub(super) fn set(&self, progress: Progress) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = progress;
    }

    pub(super) fn get(&self) -> Progress {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the caller has stopped waiting (and dropped its side).
    fn abandoned_by_caller(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }

    /// The 504 for a caller whose wait ran out; names the message if it
    /// was sent (a send in flight gets a moment to return its id).
    async fn gave_up(&self) -> GatewayError {
        let settled = Instant::now() + SEND_SETTLE;
        while self.get() == Progress::Sending && Instant::now() < settled {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match self.get() {
            Progress::Sent(id) => gave_up().with_message_id(id),
            Progress::Sending => GatewayError::new(
                ErrorKind::PollTimeout,
                "the agent did not answer within the polling budget; the message is being delivered",
            ),
            Progress::Preparing => GatewayError::new(
                ErrorKind::PollTimeout,
                "earlier messages of this user are still being answered",
            ),
        }
    }
}

/// How far a chat's task has come, for a caller that stops waiting.
#[derive(Clone, Default, PartialEq, Eq)]
pub(super) enum Progress {
    /// Waiting for the user's turn, or finding the agent: nothing sent.
    #[default]
    Preparing,
    /// The send is on the wire.
    Sending,
    /// Delivered; polled under this id.
    Sent(String),
}

/// How long a caller whose wait ran out mid-send waits for the send to
/// return, to name the message in its 504.
const SEND_SETTLE: Duration = Duration::from_secs(2);

pub(super) fn gave_up() -> GatewayError {
    GatewayError::new(
        ErrorKind::PollTimeout,
        "the agent did not answer within the polling budget",
    )
}
