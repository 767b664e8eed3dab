//! The `invariants` test dapp's entrypoint: listed in `chain.toml`'s
//! `test_dapps`, it runs over every proposed state (`/chain`) and fails
//! the block when a rule is broken. It has no actions.

use std::process::ExitCode;

use utter_dapp_sdk::Outcome;

fn main() -> ExitCode {
    utter_dapp_sdk::run(
        |_ctx, _tx, _state| {
            Ok(Outcome::Rejected(
                "invariants is a test dapp and takes no transactions".into(),
            ))
        },
        |_ctx, _state| utter_invariants::check_chain(),
    )
}
