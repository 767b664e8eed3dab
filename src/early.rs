//! Work started before `main`, while the dynamic loader's and the C++
//! libraries' start-up (RocksDB's static initialisers) still run.
//!
//! `utter run` and `utter dapp run` start a container, and every container
//! start waits for the kernel's first cgroup migration after idle: an RCU
//! grace period of 5–20 ms (see [`utter_runtime::prewarm_cgroup_migration`]).
//! That wait is the longest step of a one-off run, so it is started as
//! early as the process can: from a constructor in `.init_array` that runs
//! before the static initialisers of the C++ libraries linked in, a few
//! milliseconds before `main`.

/// Whether the arguments (after the program name) name a command that
/// starts a container at once: `run`, or `dapp run`, after any global
/// `--data-dir DIR`.
pub fn starts_container<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mut args = args.into_iter();
    let mut words = Vec::with_capacity(2);
    while let Some(arg) = args.next() {
        match arg {
            b"--" => break,
            b"--data-dir" => {
                args.next();
            }
            _ if arg.starts_with(b"-") => {}
            word => {
                words.push(word);
                if words.len() == 2 || word != b"dapp" {
                    break;
                }
            }
        }
    }
    matches!(words.as_slice(), [b"run"] | [b"dapp", b"run"])
}

/// Runs before `main`. The arguments are already there: the Rust runtime
/// captures them from an earlier `.init_array` entry (priority 99).
extern "C" fn prewarm_before_main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if starts_container(args.iter().map(|a| a.as_encoded_bytes())) {
        utter_runtime::prewarm_cgroup_migration();
    }
}

/// Priority 200: after the Rust runtime's argument capture (99), before
/// the constructors without a priority (all of the C++ ones). Placing a
/// function pointer in `.init_array` is the one unsafe attribute here.
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array.00200")]
static PREWARM_BEFORE_MAIN: extern "C" fn() = prewarm_before_main;

#[cfg(test)]
mod tests {
    use super::starts_container;

    fn starts(line: &str) -> bool {
        starts_container(line.split_whitespace().map(str::as_bytes))
    }

    #[test]
    fn only_commands_that_start_a_container_prewarm() {
        assert!(starts("run bb -- /bin/true"));
        assert!(starts("--data-dir /d run bb"));
        assert!(starts("--data-dir=/d run --json bb"));
        assert!(starts("dapp run counter --state s --txs t"));
        assert!(starts("--data-dir /d dapp run counter"));
        assert!(!starts("image run"));
        assert!(!starts("--data-dir run image list"));
        assert!(!starts("dapp"));
        assert!(!starts("dapp --help"));
        assert!(!starts("node run"));
        assert!(!starts("-- run"));
        assert!(!starts(""));
        assert!(!starts("log"));
    }
}
