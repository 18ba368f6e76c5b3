//! Standard output. `println!` panics when the reader has gone (`cliptag run | head -3`);
//! [`outln!`] returns the error instead, and `main` ends a command whose reader went
//! away quietly, with success.

use std::fmt;
use std::io::{self, Write};

/// Writes one line to standard output; an error (such as a closed pipe) is returned.
pub fn line(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// `println!` that returns `std::io::Result<()>` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

pub(crate) use outln;

/// Whether an error means that the reader of standard output went away.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
