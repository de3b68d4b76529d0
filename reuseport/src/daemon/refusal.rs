//! A refused request, as it goes back to the client: a typed code and a sentence that names the
//! fix.

use reuseport_steer::Error;
use reuseport_worker::{ErrorCode, Reply};

#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn into_reply(self) -> Reply {
        Reply::error(self.code, self.message)
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Self::new(code_of(&e), e.to_string())
    }
}

/// The wire code of a library error (the names `Error::code` gives them).
fn code_of(e: &Error) -> ErrorCode {
    match e {
        Error::NotPermitted => ErrorCode::NotPermitted,
        Error::BpfUnavailable(_) => ErrorCode::BpfUnavailable,
        Error::KernelTooOld { .. } => ErrorCode::KernelTooOld,
        Error::BpffsMissing { .. } => ErrorCode::BpffsMissing,
        Error::PrivateBpffs { .. } => ErrorCode::PrivateBpffs,
        Error::IncompatiblePin { .. } => ErrorCode::IncompatiblePin,
        Error::NoReuseport => ErrorCode::NoReuseport,
        Error::NotBound => ErrorCode::NotBound,
        Error::NotListening => ErrorCode::NotListening,
        Error::WrongProtocol { .. } => ErrorCode::WrongProtocol,
        Error::WrongFamily { .. } => ErrorCode::WrongFamily,
        Error::WrongAddress { .. } => ErrorCode::WrongAddress,
        Error::WrongV6Only { .. } => ErrorCode::WrongV6Only,
        Error::WrongDevice { .. } => ErrorCode::WrongDevice,
        Error::OtherNetns => ErrorCode::OtherNetns,
        Error::UnsupportedSocket => ErrorCode::UnsupportedSocket,
        Error::SlotOutOfRange { .. } => ErrorCode::SlotOutOfRange,
        Error::SlotsFull { .. } => ErrorCode::SlotsFull,
        Error::SlotTaken(_) => ErrorCode::SlotTaken,
        Error::SlotEmpty(_) => ErrorCode::SlotEmpty,
        Error::AlreadyInGroup(_) => ErrorCode::AlreadyInGroup,
        Error::HeldElsewhere => ErrorCode::HeldElsewhere,
        Error::InvalidWeight { .. } => ErrorCode::InvalidWeight,
        Error::ScheduleTooLong { .. } => ErrorCode::ScheduleTooLong,
        Error::NotAttached => ErrorCode::NotAttached,
        Error::NothingToDetach(_) => ErrorCode::NothingToDetach,
        Error::Io { .. } => ErrorCode::Io,
        Error::Ebpf { .. } => ErrorCode::Ebpf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed codes are written as the library names them.
    #[test]
    fn library_errors_keep_their_wire_codes() {
        let errors = [
            Error::NoReuseport,
            Error::NotListening,
            Error::SlotsFull { max: 1024 },
            Error::AlreadyInGroup(3),
            Error::HeldElsewhere,
            Error::InvalidWeight {
                weight: 0,
                max: 1000,
            },
            Error::ScheduleTooLong {
                len: 9000,
                max: 8192,
            },
            Error::NotAttached,
            Error::SlotEmpty(2),
            Error::WrongV6Only {
                want: true,
                got: false,
            },
            Error::WrongDevice { want: 0, got: 2 },
            Error::OtherNetns,
        ];
        for e in errors {
            assert_eq!(code_of(&e).to_string(), e.code());
        }
    }
}
