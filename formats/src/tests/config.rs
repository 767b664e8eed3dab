//! `chain.toml`'s deployers: who may deploy a dapp by transaction.

use crate::config::{ChainConfig, Member};
use crate::key::Keypair;

#[test]
fn deployers_decide_who_deploys_and_validators_do_when_none_are_listed() {
    let validator = Keypair::generate("v").unwrap().public();
    let author = Keypair::generate("a").unwrap().public();
    let mut config = ChainConfig::single("space", "node", &validator);
    assert!(config.may_deploy(&validator));
    assert!(!config.may_deploy(&author));
    assert_eq!(config.deployer_names(), ["node"]);
    config.deployers.push(Member {
        name: "author".into(),
        key: author.to_openssh(),
    });
    assert!(config.may_deploy(&author));
    assert!(
        !config.may_deploy(&validator),
        "a list names exactly who may"
    );
    // It survives the file and a change of the validators.
    let again = ChainConfig::parse(config.to_toml().as_bytes()).unwrap();
    assert_eq!(again, config);
    assert_eq!(config.next(&config).deployers, config.deployers);
    // A key listed twice, or not a key, is refused.
    let mut twice = config.clone();
    twice.deployers.push(Member {
        name: "again".into(),
        key: author.to_openssh(),
    });
    let err = ChainConfig::parse(twice.to_toml().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
    let mut bad = config.clone();
    bad.deployers[0].key = "not a key".into();
    let err = ChainConfig::parse(bad.to_toml().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("not an ssh-ed25519 key"), "{err}");
}
