//! The `accounting` dapp's entrypoint: `apply` and `test` through the
//! SDK, reading members from `/chain/membership`.

use std::process::ExitCode;

use utter_dapp_sdk::State;

fn main() -> ExitCode {
    let mut members = State::of_dapp("membership");
    utter_dapp_sdk::run(
        |ctx, tx, state| utter_accounting::apply(ctx, tx, state, &mut members),
        |_ctx, state| utter_accounting::test(state),
    )
}
