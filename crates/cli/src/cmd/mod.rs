//! One module per subcommand.

pub mod config;
pub mod db;
pub mod gateway;
pub mod logging;
pub mod queue;
pub mod replicate;
pub mod serve;
pub mod shutdown;
pub mod store;
pub mod store_key;
