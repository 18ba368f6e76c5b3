//! One module per subcommand.

pub mod bench;
pub mod bench_brokers;
pub mod bench_engine;
pub mod bench_grpc;
pub mod classify;
pub mod embed;
pub mod eval;
pub mod labels;
pub mod labels_kv;
pub mod preprocess;
pub mod run;
pub mod serve;
pub mod streams;
pub mod watch;
