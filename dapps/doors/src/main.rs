//! The `doors` dapp's entrypoint: `apply` and `test` through the SDK,
//! reading members and certifications from `/chain`.

use std::process::ExitCode;

use utter_dapp_sdk::State;

fn main() -> ExitCode {
    let mut members = State::of_dapp("membership");
    utter_dapp_sdk::run(
        |ctx, tx, state| utter_doors::apply(ctx.time, tx, state, &mut members),
        |_ctx, state| utter_doors::test(state),
    )
}
