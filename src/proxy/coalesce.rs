//! Write coalescing on a plaintext client connection: what one poll of the
//! connection's task writes leaves in one `write`, when Pingora flushes or,
//! at the latest, when the poll ends.
//!
//! Why: Pingora writes a response's header and its body in separate calls
//! and flushes a body with a `Content-Length` only when its write buffer
//! fills or the body ends. With Pingora's write buffer, a backend's slow
//! answer reaches the client whole at its end; without it, every answer
//! costs a `sendto` for its header and one for its body, which on a small
//! pass-through answer is a third of the syscalls. Here a header and body
//! that arrive together leave together, and a piece that arrives alone
//! leaves before the task waits for the next one.
//!
//! The stream is shared between the session that writes it (inside
//! Pingora) and the future that serves the connection (ours), which writes
//! what is left after each poll. Both run in the same task, so the lock is
//! never contended.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Pending bytes beyond which a write goes out before more are taken: a
/// large body piece is written straight from Pingora's buffer, uncopied.
const PENDING_LIMIT: usize = 16 * 1024;
/// The first allocation of the pending buffer: a header and a small body.
const PENDING_START: usize = 4 * 1024;

/// The client connection with its writes held until a flush or the end of
/// the task's poll.
pub struct Coalescing {
    shared: Arc<Shared>,
    id: UniqueIDType,
}

/// Writes out what a connection's writes left pending; see [`drain_each_poll`].
#[derive(Clone)]
pub struct Flusher(Arc<Shared>);

struct Shared(Mutex<State>);

struct State {
    stream: Stream,
    pending: Vec<u8>,
    /// How much of `pending` the socket has taken.
    sent: usize,
    /// A write that failed at the end of a poll, reported to the next writer.
    failed: Option<io::ErrorKind>,
    /// Reads that brought bytes: see [`reads`].
    reads: u64,
}

/// Wraps a plaintext stream, or takes the handle of one wrapped already (a
/// connection Pingora hands back for its next request). TLS streams are left
/// as they are: rustls frames each write into records of its own anyway, and
/// their `Ssl` answers borrow from the stream.
pub fn wrap(stream: Stream) -> (Stream, Option<Flusher>) {
    if let Some(wrapped) = stream.as_any().downcast_ref::<Coalescing>() {
        let flusher = Flusher(wrapped.shared.clone());
        return (stream, Some(flusher));
    }
    if stream.get_ssl().is_some() || stream.selected_alpn_proto().is_some() {
        return (stream, None);
    }
    let id = stream.id();
    let shared = Arc::new(Shared(Mutex::new(State {
        stream,
        pending: Vec::new(),
        sent: 0,
        failed: None,
        reads: 0,
    })));
    let flusher = Flusher(shared.clone());
    (Box::new(Coalescing { shared, id }), Some(flusher))
}

/// How many reads of a wrapped stream brought bytes so far; `None` for a
/// stream that is not wrapped. Equal counts before and after a request
/// mean the request took nothing from the socket.
pub fn reads(stream: &Stream) -> Option<u64> {
    let wrapped = stream.as_any().downcast_ref::<Coalescing>()?;
    Some(wrapped.shared.lock().reads)
}

/// Runs `serve` (which writes the connection), writing out what each of its
/// polls leaves pending; once it is done, its output waits until everything
/// it wrote has left, since the stream may be dropped next.
pub async fn drain_each_poll<F: Future>(serve: F, flusher: Option<Flusher>) -> F::Output {
    let Some(flusher) = flusher else {
        return serve.await;
    };
    let output = EachPoll {
        serve: std::pin::pin!(serve),
        flusher: &flusher,
    }
    .await;
    // A failure is the session's to report, and it has ended.
    let _ = std::future::poll_fn(|cx| flusher.poll_drain(cx)).await;
    output
}

struct EachPoll<'a, F> {
    serve: Pin<&'a mut F>,
    flusher: &'a Flusher,
}

impl<F: Future> Future for EachPoll<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let polled = self.serve.as_mut().poll(cx);
        if polled.is_pending() {
            // A failed write is kept for the session's next write; a full
            // socket wakes this task when it has room again.
            let _ = self.flusher.poll_drain(cx);
        }
        polled
    }
}

impl Flusher {
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.0.lock();
        if state.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        state.poll_drain(cx)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while writing leaves bytes, not broken invariants.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Writes the pending bytes; ready once all have left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        while self.sent < self.pending.len() {
            let written = Pin::new(&mut self.stream).poll_write(cx, &self.pending[self.sent..]);
            match ready!(written) {
                Ok(0) => return Poll::Ready(Err(self.fail(io::ErrorKind::WriteZero.into()))),
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(self.fail(e))),
            }
        }
        // Freed, not kept: an idle connection (thousands of them wait for
        // chats) should not hold a buffer between answers.
        self.pending = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        self.failed = Some(e.kind());
        e
    }

    fn pending_len(&self) -> usize {
        self.pending.len() - self.sent
    }

    /// Makes room for `len` more bytes: ready with `true` when they should
    /// be taken into the buffer, `false` when they are large enough to be
    /// written straight (the buffer is empty then).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if self.pending_len() + len > PENDING_LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(len < PENDING_LIMIT))
    }

    fn take(&mut self, buf: &[u8]) {
        if self.pending.capacity() == 0 {
            self.pending.reserve(buf.len().max(PENDING_START));
        }
        self.pending.extend_from_slice(buf);
    }
}

impl AsyncWrite for Coalescing {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        if ready!(state.poll_room(cx, buf.len()))? {
            state.take(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        let written = ready!(Pin::new(&mut state.stream).poll_write(cx, buf));
        Poll::Ready(written.map_err(|e| state.fail(e)))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        let mut state = self.shared.lock();
        if ready!(state.poll_room(cx, len))? {
            for buf in bufs {
                state.take(buf);
            }
            return Poll::Ready(Ok(len));
        }
        let written = ready!(Pin::new(&mut state.stream).poll_write_vectored(cx, bufs));
        Poll::Ready(written.map_err(|e| state.fail(e)))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        ready!(state.poll_drain(cx))?;
        Pin::new(&mut state.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        ready!(state.poll_drain(cx))?;
        Pin::new(&mut state.stream).poll_shutdown(cx)
    }
}

impl AsyncRead for Coalescing {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.shared.lock();
        let before = buf.filled().len();
        let read = Pin::new(&mut state.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            state.reads += 1;
        }
        read
    }
}

#[async_trait]
impl Shutdown for Coalescing {
    async fn shutdown(&mut self) {
        let mut this = Pin::new(self);
        if let Err(e) = std::future::poll_fn(|cx| this.as_mut().poll_shutdown(cx)).await {
            tracing::debug!(error = %e, "Shutting a client connection down failed.");
        }
    }
}

impl UniqueID for Coalescing {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

/// Only plaintext streams are wrapped (see [`wrap`]): no TLS to report.
impl Ssl for Coalescing {}

/// Not offered: Pingora peeks only while accepting a TLS connection, before
/// a stream reaches the application.
#[async_trait]
impl Peek for Coalescing {}

impl GetTimingDigest for Coalescing {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.shared.lock().stream.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.shared.lock().stream.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.shared.lock().stream.get_write_pending_time()
    }
}

impl GetProxyDigest for Coalescing {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.shared.lock().stream.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.shared.lock().stream.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Coalescing {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.shared.lock().stream.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.shared.lock().stream.set_socket_digest(digest);
    }
}

impl fmt::Debug for Coalescing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalescing").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A wrapped server side and the plain client side of a loopback connection.
    async fn pair() -> (Stream, Option<Flusher>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (stream, flusher) = wrap(Box::new(L4Stream::from(server)));
        (stream, flusher, client)
    }

    async fn read_some(client: &mut TcpStream, within: Duration) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        match tokio::time::timeout(within, client.read(&mut buf)).await {
            Ok(Ok(n)) => buf[..n].to_vec(),
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn what_a_poll_leaves_unflushed_leaves_before_the_task_waits() {
        let (mut stream, flusher, mut client) = pair().await;
        assert!(flusher.is_some());
        let serve = async move {
            // As Pingora writes a `Content-Length` header and a first piece:
            // no flush, then a wait for the backend's next piece.
            stream.write_all(b"head ").await.unwrap();
            stream.write_all(b"piece").await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            stream
        };
        let serving = tokio::spawn(drain_each_poll(serve, flusher));
        let mut got = Vec::new();
        while got.len() < 10 {
            let read = read_some(&mut client, Duration::from_millis(1500)).await;
            assert!(!read.is_empty(), "nothing arrived while the task waited");
            got.extend(read);
        }
        assert_eq!(got, b"head piece");
        assert!(!serving.is_finished());
        serving.abort();
    }

    #[tokio::test]
    async fn a_finished_task_leaves_nothing_behind_and_reads_pass_through() {
        let (mut stream, flusher, mut client) = pair().await;
        client.write_all(b"request").await.unwrap();
        let serve = async move {
            let mut buf = [0u8; 7];
            stream.read_exact(&mut buf).await.unwrap();
            stream.write_all(b"answer").await.unwrap();
            (stream, buf)
        };
        let (stream, request) = drain_each_poll(serve, flusher).await;
        assert_eq!(&request, b"request");
        assert!(reads(&stream).is_some_and(|n| n >= 1));
        assert_eq!(
            read_some(&mut client, Duration::from_secs(2)).await,
            b"answer"
        );
        // The stream comes back wrapped once, not twice: the same counts.
        let before = reads(&stream);
        let (again, flusher) = wrap(stream);
        assert!(flusher.is_some());
        assert_eq!(reads(&again), before);
    }

    #[tokio::test]
    async fn large_writes_go_straight_and_keep_their_order() {
        let (mut stream, flusher, mut client) = pair().await;
        let big = vec![b'x'; PENDING_LIMIT * 3];
        let expected: Vec<u8> = [&b"small"[..], &big, b"tail"].concat();
        let serve = async move {
            stream.write_all(b"small").await.unwrap();
            stream.write_all(&big).await.unwrap();
            stream.write_all(b"tail").await.unwrap();
            stream.flush().await.unwrap();
            stream
        };
        let writer = tokio::spawn(drain_each_poll(serve, flusher));
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let mut buf = vec![0u8; 65536];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, expected);
        writer.await.unwrap();
    }
}
