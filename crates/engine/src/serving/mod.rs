//! Work on other processes and machines over HTTP: generation on a serving engine (vLLM, SGLang,
//! TGI, llama.cpp's server) with weight sync, reward models behind OpenRLHF's `/get_reward`
//! protocol (client and server), and an LLM judge. Every request has a timeout and bounded
//! retries; every error names the endpoint.

pub mod generate;
pub mod http;
pub mod judge;
pub mod options;
pub mod reward;
pub mod server;
pub mod sync;

pub use http::HttpConfig;
pub use judge::{Judge, JudgeConfig};
pub use options::ServerOptions;
pub use reward::{RemoteReward, RemoteRewardConfig};
pub use server::{Api, Server, ServerConfig};
pub use sync::{ExportFormat, SyncConfig, SyncMethod, SyncReport};
