//! The `membership` dapp's entrypoint: `apply` and `test` through the SDK.

use std::process::ExitCode;

fn main() -> ExitCode {
    utter_dapp_sdk::run(
        |_ctx, tx, state| utter_membership::apply(tx, state),
        |_ctx, state| utter_membership::test(state),
    )
}
