//! Connections of the receive listeners. Each accepted connection holds a permit of a
//! per-listener semaphore until it closes, so a flood of connections waits in the kernel's
//! accept backlog instead of exhausting memory or file descriptors. [`Incoming`] runs the
//! accept loop, performs TLS handshakes concurrently (each bounded by a timeout, so a slow
//! handshake never stalls accepting) and closes connections that stay idle too long.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use super::tls::ServerTls;

/// The transport under a connection.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Closes a connection after `timeout` without any read or write progress.
struct Idle {
    timeout: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Idle {
    fn new(timeout: Duration) -> Idle {
        let now = Instant::now();
        Idle {
            timeout,
            last: now,
            sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Whether the connection has been idle for the timeout; registers a wake-up otherwise.
    /// The timer is re-armed lazily from the last activity, so progress costs no timer update.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last + self.timeout;
            if due <= Instant::now() {
                return true;
            }
            self.sleep.as_mut().reset(due);
        }
    }
}

/// An accepted connection that gives its permit back when dropped.
pub struct LimitedStream {
    io: Io,
    idle: Option<Idle>,
    _permit: OwnedSemaphorePermit,
}

impl LimitedStream {
    fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }

    /// The client certificate chain presented in the TLS handshake (mTLS), if any.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match &self.io {
            Io::Plain(_) => None,
            Io::Tls(s) => s.get_ref().1.peer_certificates(),
        }
    }
}

/// A listener that accepts at most `max` connections at once.
pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl LimitedListener {
    /// Wraps `inner`, allowing `max` open connections.
    pub fn new(inner: TcpListener, max: usize) -> Self {
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(max.max(1))),
        }
    }

    /// Waits for a free slot, then for a connection. Accept errors (e.g. out of file
    /// descriptors) are logged and retried after a pause, never returned.
    pub async fn accept_limited(&mut self) -> (LimitedStream, SocketAddr) {
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                // The semaphore is never closed; fall back to a plain pause.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        LimitedStream {
                            io: Io::Plain(stream),
                            idle: None,
                            _permit: permit,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// How a listener treats its connections.
#[derive(Clone, Debug)]
pub struct ConnOptions {
    /// Most connections open at once.
    pub max_connections: usize,
    /// TLS, when `[receive.tls]` is set.
    pub tls: Option<Arc<ServerTls>>,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Close a connection without read or write progress for this long.
    pub idle_timeout: Duration,
}

/// Accepted (and, with TLS, handshaken) connections of one listener. Dropping it stops the
/// accept loop.
pub struct Incoming {
    rx: mpsc::Receiver<LimitedStream>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Incoming {
    /// Starts accepting on `listener`.
    pub fn new(listener: TcpListener, options: ConnOptions) -> Incoming {
        let (tx, rx) = mpsc::channel(64);
        let mut limited = LimitedListener::new(listener, options.max_connections);
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, peer) = tokio::select! {
                    s = limited.accept_limited() => s,
                    _ = tx.closed() => return,
                };
                stream.idle = Some(Idle::new(options.idle_timeout));
                let Some(tls) = &options.tls else {
                    if tx.send(stream).await.is_err() {
                        return;
                    }
                    continue;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let tx = tx.clone();
                let limit = options.handshake_timeout;
                tokio::spawn(async move {
                    let LimitedStream { io, idle, _permit } = stream;
                    let Io::Plain(tcp) = io else { return };
                    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx
                                .send(LimitedStream {
                                    io: Io::Tls(Box::new(tls)),
                                    idle,
                                    _permit,
                                })
                                .await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Incoming { rx, task }
    }

    /// The next connection (None once the accept loop has ended).
    pub async fn next(&mut self) -> Option<LimitedStream> {
        self.rx.recv().await
    }

    /// The stream of connections tonic's server takes.
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<LimitedStream, io::Error>> + Send + 'static {
        futures_util::stream::unfold(self, |mut incoming| async move {
            let stream = incoming.next().await?;
            Some((Ok(stream), incoming))
        })
    }
}

impl tonic::transport::server::Connected for LimitedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().connect_info()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "connection idle for receive.idle_timeout",
    )
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if let Some(idle) = &mut this.idle {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => idle.touch(),
                Poll::Pending if idle.expired(cx) => return Poll::Ready(Err(timed_out())),
                _ => {}
            }
        }
        polled
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if let Some(idle) = &mut this.idle {
            match &polled {
                Poll::Ready(Ok(n)) if *n > 0 => idle.touch(),
                Poll::Pending if idle.expired(cx) => return Poll::Ready(Err(timed_out())),
                _ => {}
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_one_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut limited = LimitedListener::new(listener, 1);
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap(); // sits in the backlog
        let (first, _) = limited.accept_limited().await;
        let second = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            limited.accept_limited(),
        )
        .await;
        assert!(
            second.is_err(),
            "the second connection must wait for a slot"
        );
        drop(first);
        let second =
            tokio::time::timeout(std::time::Duration::from_secs(2), limited.accept_limited()).await;
        assert!(second.is_ok(), "a closed connection frees its slot");
    }
}
