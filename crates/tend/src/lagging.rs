//! A broadcast receiver as a [`futures_core::Stream`] that skips what it
//! missed: the shared core of [`crate::Subscription`] and
//! [`crate::LogFollower`].

use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
};

use futures_core::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

/// Items of a broadcast channel; a receiver that fell behind skips the
/// oldest it missed and counts them.
pub(crate) struct SkipLagged<T> {
    inner: BroadcastStream<T>,
    missed: u64,
}

impl<T: Clone + Send + 'static> SkipLagged<T> {
    pub fn new(receiver: broadcast::Receiver<T>) -> Self {
        SkipLagged {
            inner: BroadcastStream::new(receiver),
            missed: 0,
        }
    }

    /// Items skipped since the last call.
    pub fn take_missed(&mut self) -> u64 {
        std::mem::take(&mut self.missed)
    }

    /// The next item if one is already waiting.
    pub fn try_next(&mut self) -> Option<T> {
        let mut context = Context::from_waker(Waker::noop());
        match Pin::new(self).poll_next(&mut context) {
            Poll::Ready(item) => item,
            Poll::Pending => None,
        }
    }
}

impl<T: Clone + Send + 'static> Stream for SkipLagged<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => return Poll::Ready(Some(item)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    self.missed += missed;
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn skips_and_counts_what_a_slow_receiver_missed() {
        let (sender, receiver) = broadcast::channel(2);
        let mut stream = SkipLagged::new(receiver);
        assert_eq!(stream.try_next(), None);
        for n in 0..5 {
            sender.send(n).unwrap();
        }
        assert_eq!(stream.try_next(), Some(3));
        assert_eq!(stream.take_missed(), 3);
        assert_eq!(stream.take_missed(), 0);
        assert_eq!(
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await,
            Some(4)
        );
        drop(sender);
        assert_eq!(
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await,
            None
        );
    }
}
