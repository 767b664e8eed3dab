//! The `leases` dapp's entrypoint: `apply` and `test` through the SDK,
//! reading members from `/chain/membership` and lease escrows from
//! `/chain/accounting`.

use std::process::ExitCode;

use utter_dapp_sdk::State;

fn main() -> ExitCode {
    let mut members = State::of_dapp("membership");
    let mut accounts = State::of_dapp("accounting");
    utter_dapp_sdk::run(
        |ctx, tx, state| {
            let chain = utter_leases::Chain {
                members: &mut members,
                accounts: &mut accounts,
            };
            utter_leases::apply(ctx, tx, state, chain)
        },
        |ctx, state| utter_leases::test(ctx.time, state),
    )
}
