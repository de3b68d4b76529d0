//! The exit statuses of `reuseport`, so a script can tell "the daemon is not running" from "the
//! daemon said no" without reading messages. Listed in `--help`, the man page and the README.

use std::process::ExitCode;

use reuseport_worker::ClientError;

/// Why the command exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    /// Anything else: an I/O error, a daemon that failed to start, an unreadable reply.
    Failure = 1,
    /// A bad command line (clap's own status for it).
    Usage = 2,
    /// No daemon listens on the control socket.
    NotRunning = 3,
    /// The daemon (or the control socket's permissions) refused the request.
    Refused = 4,
}

impl Exit {
    pub const ALL: [Self; 5] = [
        Self::Success,
        Self::Failure,
        Self::Usage,
        Self::NotRunning,
        Self::Refused,
    ];

    /// The status an error ends the command with: [`Exit::Usage`] for an invalid configuration
    /// file or a [`UsageError`], else that of the first control-socket error in its chain, else
    /// [`Exit::Failure`].
    pub fn of(error: &anyhow::Error) -> Self {
        let usage = error
            .chain()
            .any(|cause| cause.is::<crate::config::Invalid>() || cause.is::<UsageError>());
        if usage {
            return Self::Usage;
        }
        let client = error
            .chain()
            .find_map(|cause| cause.downcast_ref::<ClientError>());
        match client {
            Some(ClientError::NotRunning(_)) => Self::NotRunning,
            // `reload` of a bad file: the same status as `config check` gives it.
            Some(ClientError::Rejected {
                code: reuseport_worker::ErrorCode::InvalidConfig,
                ..
            }) => Self::Usage,
            Some(ClientError::PermissionDenied(_) | ClientError::Rejected { .. }) => Self::Refused,
            _ => Self::Failure,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "any other failure (I/O, the daemon failing to start, a bad reply)",
            Self::Usage => {
                "usage error: an unknown command, flag or value, or an invalid configuration file"
            }
            Self::NotRunning => "the daemon is not running (no control socket to connect to)",
            Self::Refused => {
                "the daemon refused the request (unknown group or slot, bad value, or the \
                 control socket's permissions)"
            }
        }
    }

    /// The table `--help` ends with.
    pub fn help() -> String {
        let mut out = String::from("Exit status:\n");
        for exit in Self::ALL {
            out.push_str(&format!("  {}  {}\n", exit.code(), exit.meaning()));
        }
        out
    }
}

/// A command line (or configuration) that cannot work, found after clap parsed it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn client_errors_map_to_their_statuses() {
        let not_running = anyhow::Error::new(ClientError::NotRunning(PathBuf::from("/x")));
        assert_eq!(Exit::of(&not_running), Exit::NotRunning);
        let refused = anyhow::Error::new(ClientError::Rejected {
            code: reuseport_worker::ErrorCode::UnknownGroup,
            message: "no group 1.2.3.4:5".into(),
        })
        .context("policy get");
        assert_eq!(Exit::of(&refused), Exit::Refused);
        assert_eq!(Exit::of(&anyhow::anyhow!("boom")), Exit::Failure);
        assert_eq!(Exit::NotRunning.code(), 3);
    }
}
