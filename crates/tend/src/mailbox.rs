//! The manager's line to one supervisor: an unbounded, many-sender,
//! one-receiver queue that knows when either side is gone.
//!
//! Written here rather than taken from `tokio::sync::mpsc` for its size:
//! every daemon has one for its whole life, and an mpsc channel is two
//! allocations of 512 and 288 bytes (its state is padded to cache lines
//! and its first block holds 32 slots), where this is one of about 100.
//! At 1,000 daemons that is most of a mebibyte of `tend up`'s heap for a
//! queue that carries one message, a stop, in a supervisor's life.
//!
//! Wake-ups go through a [`Notify`] with `notify_one`, which keeps a
//! permit when the receiver is not waiting, so a message sent between the
//! receiver's look at the queue and its wait is not missed.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;

/// Makes a mailbox: its first sender and its receiver.
pub(crate) fn mailbox<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            receiver_alive: true,
        }),
        wake: Notify::new(),
    });
    (
        Sender {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

struct Inner<T> {
    state: Mutex<State<T>>,
    /// Wakes the receiver: a message, or the last sender gone.
    wake: Notify,
}

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Puts messages in the mailbox. Cloning adds a sender; the receiver
/// learns the mailbox is closed once every sender is dropped.
pub(crate) struct Sender<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Sender<T> {
    /// Queues `message`, or gives it back when the receiver is gone.
    pub fn send(&self, message: T) -> Result<(), T> {
        {
            let mut state = self.inner.lock();
            if !state.receiver_alive {
                return Err(message);
            }
            state.queue.push_back(message);
        }
        self.inner.wake.notify_one();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.inner.lock().senders += 1;
        Sender {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.inner.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.inner.wake.notify_one();
        }
    }
}

/// Why [`Receiver::try_recv`] gave nothing.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TryRecvError {
    /// No message now; senders remain.
    Empty,
    /// No message, and no sender is left.
    Disconnected,
}

/// Takes messages out of the mailbox, in the order they were sent.
pub(crate) struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Receiver<T> {
    /// The next message without waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut state = self.inner.lock();
        match state.queue.pop_front() {
            Some(message) => Ok(message),
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next message; `None` once the queue is empty and every sender
    /// is gone. Cancel-safe: a message is taken only by a `recv` that
    /// returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(message) => return Some(message),
                Err(TryRecvError::Disconnected) => return None,
                // A permit left by a send or drop since the look above
                // ends this wait at once; a stale one costs a loop.
                Err(TryRecvError::Empty) => self.inner.wake.notified().await,
            }
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Dropped outside the lock: a message's own drop may wake others.
        let queued = {
            let mut state = self.inner.lock();
            state.receiver_alive = false;
            std::mem::take(&mut state.queue)
        };
        drop(queued);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn delivers_in_order_and_closes_when_the_last_sender_goes() {
        let (tx, mut rx) = mailbox();
        let second = tx.clone();
        tx.send(1).unwrap();
        second.send(2).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        second.send(3).unwrap();
        drop(second);
        // Queued messages outlive their senders.
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn a_send_to_a_dropped_receiver_gives_the_message_back() {
        let (tx, rx) = mailbox();
        let (reply, answered) = tokio::sync::oneshot::channel::<()>();
        tx.send(Some(reply)).unwrap();
        drop(rx);
        // The queued message was dropped with the receiver.
        assert!(answered.await.is_err());
        assert!(matches!(tx.send(None), Err(None)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_receiver_is_woken_by_a_send_and_by_the_last_drop() {
        let (tx, mut rx) = mailbox();
        let receiver = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        tx.send("stop").unwrap();
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(10), receiver)
            .await
            .expect("the receiver was woken")
            .unwrap();
        assert_eq!(got, (Some("stop"), None));
    }

    #[tokio::test]
    async fn a_recv_cancelled_in_a_select_loses_no_message() {
        let (tx, mut rx) = mailbox();
        // Cancelled while waiting: nothing was queued yet.
        tokio::select! {
            biased;
            _ = rx.recv() => panic!("nothing was sent"),
            () = tokio::task::yield_now() => {}
        }
        tx.send(7).unwrap();
        // A cancelled wait left no claim on the message; the permit the
        // send stored ends the next wait at once.
        assert_eq!(rx.recv().await, Some(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_on_other_threads_lose_nothing() {
        let (tx, mut rx) = mailbox();
        let senders: Vec<_> = (0..4)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        tx.send(s * 1000 + i).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut seen = Vec::new();
        while let Some(n) = rx.recv().await {
            seen.push(n);
        }
        for sender in senders {
            sender.join().unwrap();
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..4000).collect::<Vec<_>>());
    }
}
