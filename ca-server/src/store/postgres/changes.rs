//! Telling the other replicas at once: every transaction that changes what replicas
//! publish (a revocation; roots, intermediates, JWT keys, federations, the bundle version)
//! sends `NOTIFY trellis_changes` as it commits, and each store keeps one connection of its
//! own `LISTEN`ing, so a follower wakes within milliseconds instead of at its next periodic
//! check. The periodic check stays: a notification sent while this connection was down is
//! lost, so every (re)connection counts as a change too.

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Socket};

/// The channel every replica of one database listens on.
const CHANNEL: &str = "trellis_changes";
/// How long a lost listening connection waits before it connects again.
const RECONNECT: Duration = Duration::from_secs(1);

/// Sends the notification in `tx`: PostgreSQL delivers it when (and only if) that
/// transaction commits.
pub(super) async fn notify(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .await
        .map(|_| ())
}

/// Keeps a connection listening until every receiver of `signal` is gone, counting in
/// `signal` each notification and each successful (re)connection.
pub(super) async fn listen<T>(config: tokio_postgres::Config, tls: T, signal: watch::Sender<u64>)
where
    T: MakeTlsConnect<Socket> + Clone + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let mut warned = false;
    while !signal.is_closed() {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                let (heard, mut hearing) = tokio::sync::mpsc::unbounded_channel();
                // The connection delivers notifications only while it is polled.
                let driver = tokio::spawn(async move {
                    while let Some(Ok(message)) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        if let AsyncMessage::Notification(_) = message
                            && heard.send(()).is_err()
                        {
                            return;
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    warned = false;
                    signal.send_modify(|n| *n += 1);
                    while hearing.recv().await.is_some() {
                        signal.send_modify(|n| *n += 1);
                    }
                }
                driver.abort();
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    error = %e,
                    "cannot listen for other replicas' changes; following them every \
                     few hundred milliseconds until the database answers"
                );
            }
            Err(_) => {}
        }
        tokio::time::sleep(RECONNECT).await;
    }
}
