//! `hostile MODE [ARG]`: does one thing a dapp must not be able to do and
//! prints what happened. Exit 0 means it succeeded (the sandbox failed),
//! 1 means the system refused; the message names the error.
//!
//! Modes: `connect ADDR` (TCP), `ptrace` (attach to a child), `raw-socket`,
//! `mount`, `unshare-user`, `alloc` (touch memory until killed), `segv` (a real fault), `read PATH`,
//! `compat-syscall` (x86-64: `getpid` through the 32-bit `int 0x80` entry).
//!
//! Built statically by the tests (`utter_testkit::static_binary`) and run
//! as the only file of an image.
#![allow(unsafe_code)] // raw system calls are the point of this program

use std::io::Write;
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn report(what: &str, result: Result<(), std::io::Error>) -> ExitCode {
    match result {
        Ok(()) => {
            println!("{what}: succeeded");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{what}: refused: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(ret: libc::c_int) -> Result<(), std::io::Error> {
    if ret < 0 { Err(errno()) } else { Ok(()) }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = args.get(1).cloned().unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("connect") => report(
            "connect",
            arg.parse()
                .map_err(std::io::Error::other)
                .and_then(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
                .map(|_| ()),
        ),
        Some("ptrace") => {
            // SAFETY: fork in a single-threaded program; the child only pauses.
            let child = unsafe { libc::fork() };
            if child == 0 {
                loop {
                    // SAFETY: plain pause in the child.
                    unsafe { libc::pause() };
                }
            }
            // SAFETY: ptrace with valid arguments; failure is reported.
            let ret = unsafe {
                libc::ptrace(
                    libc::PTRACE_ATTACH,
                    child,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
            let result = check(ret as libc::c_int);
            // SAFETY: killing our own child.
            unsafe { libc::kill(child, libc::SIGKILL) };
            report("ptrace", result)
        }
        Some("raw-socket") => {
            // SAFETY: socket(2) with constant arguments.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            report("raw socket", check(fd))
        }
        Some("mount") => {
            // SAFETY: mount(2) with NUL-terminated constant strings.
            let ret = unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            report("mount", check(ret))
        }
        Some("unshare-user") => {
            // SAFETY: unshare(2) with a constant flag.
            let ret = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            report("unshare user namespace", check(ret))
        }
        Some("alloc") => {
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            loop {
                blocks.push(vec![1u8; 8 << 20]);
                if blocks.len() % 16 == 0 {
                    let _ = writeln!(std::io::stderr(), "{} MiB", blocks.len() * 8);
                }
            }
        }
        Some("segv") => {
            // SAFETY: deliberately faults; the process dies of SIGSEGV.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
            ExitCode::SUCCESS
        }
        #[cfg(target_arch = "x86_64")]
        Some("compat-syscall") => {
            let ret: i64;
            // SAFETY: i386's getpid (20) through the 32-bit entry: no
            // arguments, no memory; the kernel may clobber r8-r11.
            unsafe {
                std::arch::asm!(
                    "int 0x80",
                    inlateout("rax") 20i64 => ret,
                    out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                    options(nostack),
                );
            }
            report(
                "32-bit system call",
                if ret < 0 {
                    Err(std::io::Error::from_raw_os_error(-ret as i32))
                } else {
                    Ok(())
                },
            )
        }
        Some("read") => report(
            "read",
            std::fs::read(&arg).map(|bytes| {
                println!("{}", String::from_utf8_lossy(&bytes));
            }),
        ),
        _ => {
            eprintln!(
                "usage: hostile connect ADDR | ptrace | raw-socket | mount | unshare-user | alloc | segv | read PATH | compat-syscall"
            );
            ExitCode::from(2)
        }
    }
}
