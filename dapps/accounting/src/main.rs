//! The `accounting` dapp's entrypoint: `apply` and `test` through the
//! SDK, reading members from `/chain/membership` and lease settle records
//! from `/chain/leases`.

use std::process::ExitCode;

use utter_dapp_sdk::State;

fn main() -> ExitCode {
    let mut members = State::of_dapp("membership");
    let mut leases = State::of_dapp("leases");
    utter_dapp_sdk::run(
        |ctx, tx, state| {
            let chain = utter_accounting::Chain {
                members: &mut members,
                leases: &mut leases,
            };
            utter_accounting::apply(ctx, tx, state, chain)
        },
        |_ctx, state| utter_accounting::test(state),
    )
}
