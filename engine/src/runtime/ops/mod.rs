//! Submission-queue entries for each operation the runtime submits, one file per opcode family
//! (like monoio's `driver/op/`), plus the `user_data` token that routes a completion back.
//!
//! Building an SQE is safe; pushing it is not, because the kernel will read or write the memory
//! the entry points to until its completion arrives. Every builder here documents which memory
//! that is; the core loop keeps it alive in the connection's slab entry (or the core itself),
//! which it frees only after the last completion for it (tokio-uring's `Lifecycle::Ignored`).

pub mod accept;
pub mod close;
pub mod connect;
pub mod eventfd;
pub mod recv;
pub mod send;
pub mod splice;
pub mod timeout;
pub mod vectored;

/// What a completion belongs to. Encoded into the 64-bit `user_data` of the SQE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The listener's (multishot) accept.
    Accept,
    /// The mailbox eventfd read.
    Mailbox,
    /// The periodic tick timeout.
    Tick,
    /// A cancellation request for a core-level op (its own completion carries no meaning).
    CoreCancel,
    /// An operation of the connection in slab slot `slot`.
    Conn {
        /// Slab slot of the connection.
        slot: u32,
        /// Which of its operations.
        op: ConnOp,
    },
}

/// The operations a connection may have in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnOp {
    /// Outbound connect.
    Connect = 0,
    /// The link timeout attached to the connect.
    ConnectTimeout = 1,
    /// The one receive (plain buffer or iovecs).
    Recv = 2,
    /// The one send (sendmsg over iovecs).
    Send = 3,
    /// An async-cancel request targeting this connection's ops.
    Cancel = 4,
    /// Closing the socket.
    Close = 5,
    /// A step of a splice chain that fills the connection's pipe (see `ops::splice`).
    Fill = 6,
}

const KIND_ACCEPT: u64 = 1;
const KIND_MAILBOX: u64 = 2;
const KIND_TICK: u64 = 3;
const KIND_CORE_CANCEL: u64 = 4;
const KIND_CONN: u64 = 8;

impl Token {
    /// The `user_data` value for this token.
    pub fn encode(self) -> u64 {
        match self {
            Token::Accept => KIND_ACCEPT,
            Token::Mailbox => KIND_MAILBOX,
            Token::Tick => KIND_TICK,
            Token::CoreCancel => KIND_CORE_CANCEL,
            Token::Conn { slot, op } => KIND_CONN | (op as u64) << 4 | u64::from(slot) << 8,
        }
    }

    /// Decode a completion's `user_data`; `None` for values this runtime never produces.
    pub fn decode(user_data: u64) -> Option<Token> {
        match user_data & 0xf {
            KIND_ACCEPT if user_data == KIND_ACCEPT => Some(Token::Accept),
            KIND_MAILBOX if user_data == KIND_MAILBOX => Some(Token::Mailbox),
            KIND_TICK if user_data == KIND_TICK => Some(Token::Tick),
            KIND_CORE_CANCEL if user_data == KIND_CORE_CANCEL => Some(Token::CoreCancel),
            KIND_CONN => {
                let op = match (user_data >> 4) & 0xf {
                    0 => ConnOp::Connect,
                    1 => ConnOp::ConnectTimeout,
                    2 => ConnOp::Recv,
                    3 => ConnOp::Send,
                    4 => ConnOp::Cancel,
                    5 => ConnOp::Close,
                    6 => ConnOp::Fill,
                    _ => return None,
                };
                let slot = u32::try_from(user_data >> 8).ok()?;
                Some(Token::Conn { slot, op })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let ops = [
            ConnOp::Connect,
            ConnOp::ConnectTimeout,
            ConnOp::Recv,
            ConnOp::Send,
            ConnOp::Cancel,
            ConnOp::Close,
            ConnOp::Fill,
        ];
        let mut all = vec![
            Token::Accept,
            Token::Mailbox,
            Token::Tick,
            Token::CoreCancel,
        ];
        for slot in [0, 1, 77, u32::MAX] {
            all.extend(ops.iter().map(|&op| Token::Conn { slot, op }));
        }
        for t in &all {
            assert_eq!(Token::decode(t.encode()), Some(*t));
        }
        let mut codes: Vec<u64> = all.iter().map(|t| t.encode()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len(), "tokens must be distinct");
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(KIND_CONN | 0xf << 4), None);
    }
}
