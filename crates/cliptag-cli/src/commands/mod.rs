//! One module per subcommand.

pub mod bench;
pub mod classify;
pub mod embed;
pub mod preprocess;
