//! Why the server closes a WebSocket: the one table of close codes and reasons (RFC 6455 §7.4,
//! PROTOCOL.md §5). Every close the gateway sends is one of these; add a variant here, never a
//! literal code elsewhere.

/// A reason the server closes a connection. The wire code and text come from [`CloseReason::entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed, or the connection ended without a more specific reason.
    Normal,
    /// The gateway is shutting down.
    ShuttingDown,
    /// No inbound traffic (not even a pong) for the idle timeout.
    IdleTimeout,
    /// A frame RFC 6455 forbids (bad continuation, reserved bits, bad opcode…).
    ProtocolError,
    /// A client frame without the mask bit (RFC 6455 §5.1).
    Unmasked,
    /// A new data frame while a fragmented message is pending (RFC 6455 §5.4).
    ExpectedContinuation,
    /// Binary frames carry nothing in this protocol.
    Binary,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A permessage-deflate message that does not inflate.
    InvalidCompressedData,
    /// A message over the inbound size limit (inflated size, when compressed).
    TooBig,
    /// Too many connections, globally or for the app.
    ConnectionLimit,
    /// The outbound queue passed its byte bound.
    SlowConsumer,
}

impl CloseReason {
    /// Every reason, for tests and documentation.
    pub const ALL: [CloseReason; 12] = [
        CloseReason::Normal,
        CloseReason::ShuttingDown,
        CloseReason::IdleTimeout,
        CloseReason::ProtocolError,
        CloseReason::Unmasked,
        CloseReason::ExpectedContinuation,
        CloseReason::Binary,
        CloseReason::InvalidUtf8,
        CloseReason::InvalidCompressedData,
        CloseReason::TooBig,
        CloseReason::ConnectionLimit,
        CloseReason::SlowConsumer,
    ];

    /// The table: close code and reason text as sent in the close frame.
    pub const fn entry(self) -> (u16, &'static str) {
        match self {
            CloseReason::Normal => (1000, ""),
            CloseReason::ShuttingDown => (1001, "server shutting down"),
            CloseReason::IdleTimeout => (1001, "idle timeout"),
            CloseReason::ProtocolError => (1002, "protocol error"),
            CloseReason::Unmasked => (1002, "client frames must be masked"),
            CloseReason::ExpectedContinuation => (1002, "expected a continuation frame"),
            CloseReason::Binary => (1003, "binary frames are not supported"),
            CloseReason::InvalidUtf8 => (1007, "invalid utf-8"),
            CloseReason::InvalidCompressedData => (1007, "invalid compressed data"),
            CloseReason::TooBig => (1009, "message too big"),
            CloseReason::ConnectionLimit => (1013, "connection limit reached"),
            CloseReason::SlowConsumer => (4008, "slow consumer"),
        }
    }

    pub const fn code(self) -> u16 {
        self.entry().0
    }

    pub const fn text(self) -> &'static str {
        self.entry().1
    }

    /// The close frame carrying this reason.
    pub fn frame(self) -> bytes::Bytes {
        super::frame::close(self.code(), self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_fits_a_control_frame() {
        for reason in CloseReason::ALL {
            assert!(reason.text().len() <= 123, "{reason:?}");
            let frame = reason.frame();
            assert_eq!(&frame[2..4], &reason.code().to_be_bytes());
        }
    }

    #[test]
    fn codes_are_the_published_ones() {
        let codes: Vec<u16> = CloseReason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(
            codes,
            [1000, 1001, 1001, 1002, 1002, 1002, 1003, 1007, 1007, 1009, 1013, 4008]
        );
    }
}
