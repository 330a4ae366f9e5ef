//! Keep-alive HTTP/1 connections to the upstream.
//!
//! Each connection is driven by a task of its own; a request borrows the connection's sender and
//! gives it back once the response has been read in full, so the next request reuses it. Taking
//! and giving back is a lock around a list: no task is started per request, no key is hashed,
//! and idle connections are tried most recently used first.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt;

use super::{SendError, error_chain};

/// Connections to one upstream.
#[derive(Debug)]
pub(crate) struct Pool {
    connector: HttpConnector,
    /// Where to connect (scheme and authority of the upstream).
    address: Uri,
    /// Idle connections, the most recently used at the back.
    idle: Mutex<VecDeque<Idle>>,
    /// Idle connections older than this are closed instead of reused.
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// A connection lent to one request, given back to its pool by [`Lent::give_back`].
#[derive(Debug)]
pub(crate) struct Lent {
    sender: SendRequest<Body>,
    pool: Arc<Pool>,
}

impl Lent {
    /// Returns the connection to the pool: its response has been read in full.
    pub(crate) fn give_back(self) {
        self.pool.put(self.sender);
    }
}

impl Pool {
    pub(crate) fn new(connector: HttpConnector, address: Uri, idle_timeout: Duration) -> Self {
        Self {
            connector,
            address,
            idle: Mutex::new(VecDeque::new()),
            idle_timeout,
        }
    }

    /// Sends `req` (its URI in origin form) on an idle connection, or on a new one. A request
    /// that a reused connection could not take (it closed before the request was written) goes
    /// on another connection, as the pooled client of `hyper-util` does; once written, a failure
    /// is the caller's to judge.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lent), SendError> {
        loop {
            let (mut sender, reused) = match self.take() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(SendError::Broken(
                    "the new connection closed before the request was sent".into(),
                ));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lent = Lent {
                        sender,
                        pool: self.clone(),
                    };
                    return Ok((resp, lent));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Broken(error_chain(&e.into_error()))),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open and not too old.
    fn take(&self) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(entry) = idle.pop_back() {
            if !entry.sender.is_closed() && now.duration_since(entry.since) < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        // The oldest are at the front: close those past the idle timeout.
        while idle
            .front()
            .is_some_and(|e| now.duration_since(e.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since: now });
    }

    /// Opens a connection (the connector applies the connect timeout and `TCP_NODELAY`) and
    /// starts the task that drives it.
    async fn connect(&self) -> Result<SendRequest<Body>, SendError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.address.clone())
            .await
            .map_err(|e| SendError::Connect(error_chain(&e)))?;
        let (sender, conn) = http1::handshake::<_, Body>(io)
            .await
            .map_err(|e| SendError::Connect(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::server::conn::http1 as server;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream answering `ok`, counting the connections it accepted; with `keep_alive` off
    /// it closes each connection after one answer.
    async fn upstream(keep_alive: bool) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Body::from("ok")))
                    });
                    let _ = server::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}/").parse().unwrap(), accepted)
    }

    async fn get(pool: &Arc<Pool>) -> String {
        let req = Request::get("/x")
            .header("host", "upstream")
            .body(Body::empty())
            .unwrap();
        let (resp, conn) = pool.send(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        conn.give_back();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn connections_are_reused_and_closed_ones_replaced() {
        let (address, accepted) = upstream(true).await;
        let pool = Arc::new(Pool::new(
            HttpConnector::new(),
            address,
            Duration::from_secs(30),
        ));
        for _ in 0..5 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one keep-alive connection"
        );

        // The upstream closes every connection after one answer: each request still succeeds,
        // on a new connection.
        let (address, accepted) = upstream(false).await;
        let pool = Arc::new(Pool::new(
            HttpConnector::new(),
            address,
            Duration::from_secs(30),
        ));
        for _ in 0..3 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        // Past the idle timeout a connection is not reused.
        let (address, accepted) = upstream(true).await;
        let pool = Arc::new(Pool::new(HttpConnector::new(), address, Duration::ZERO));
        for _ in 0..2 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
