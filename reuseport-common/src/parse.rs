//! The error of parsing one of the [named enums](crate::Policy) from its name.

use std::{borrow::ToOwned, fmt, string::String};

/// An unknown name given for one of the named enums; the message lists the known ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    what: &'static str,
    got: String,
    expected: &'static [&'static str],
}

impl ParseError {
    pub(crate) fn new(what: &'static str, got: &str, expected: &'static [&'static str]) -> Self {
        Self {
            what,
            got: got.to_owned(),
            expected,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown {} {:?}: expected one of ", self.what, self.got)?;
        for (i, name) in self.expected.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}
