//! `tcpmon watch`: live transitions.
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {}

pub fn run(_args: &WatchArgs, _style: tcpmon::render::Style) -> anyhow::Result<u8> {
    anyhow::bail!("watch: not built yet")
}
