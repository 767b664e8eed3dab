//! `utter dapp …`: write a dapp (`new`), test it (`test`, `check`, `run`),
//! and ship it to a running chain (`deploy`, `upgrade`, `remove`, `ls`).

mod new;
mod project;
mod run;
mod ship;
mod test;

/// Uploading an image to a node when it lacks it; `lease open` sends the
/// lease's image the way `dapp deploy` sends a dapp's.
pub use ship::image_on_node;

use anyhow::Result;
use clap::Subcommand;
use utter_node::Home;

/// `utter dapp …`
#[derive(Subcommand, Debug)]
pub enum DappCommand {
    /// Make a new dapp project: code, a build step, fixtures that pass
    New(new::NewArgs),
    /// Build a project's image, check it against the dapp protocol and run
    /// its fixtures through a real container; shows what differs
    Test(test::TestArgs),
    /// Run the dapp protocol's conformance checks on a project or an image
    Check(test::CheckArgs),
    /// Run a dapp once on a state directory and a file of transactions,
    /// outside any chain: prints the results and, when the dapp succeeds,
    /// writes the new state into the directory
    Run(run::DappRunArgs),
    /// Deploy a dapp on the running chain by transaction (uploading its
    /// image to the node first); chain.toml says who may
    Deploy(ship::DeployArgs),
    /// Swap a deployed dapp's image, keeping its state; the new image's
    /// test must pass on the current state, or the upgrade is rejected
    Upgrade(ship::UpgradeArgs),
    /// Remove a deployed dapp and its state (the blocks before keep its history)
    Remove(ship::RemoveArgs),
    /// List the dapps deployed on main
    Ls(ship::LsArgs),
}

/// `utter dapp …`; the exit code.
pub fn run(home: &Home, cmd: DappCommand) -> Result<u8> {
    match cmd {
        DappCommand::New(args) => new::new(args),
        DappCommand::Test(args) => test::test(args),
        DappCommand::Check(args) => test::check(home, args),
        DappCommand::Run(args) => run::dapp_run(home, args),
        DappCommand::Deploy(args) => ship::deploy(home, args),
        DappCommand::Upgrade(args) => ship::upgrade(home, args),
        DappCommand::Remove(args) => ship::remove(home, args),
        DappCommand::Ls(args) => ship::ls(home, args),
    }
}
