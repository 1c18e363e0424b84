//! A node never lingers half-dead: a panic on any thread (the node thread, a transport task,
//! an HTTP handler) is logged and ends the process with [`PANIC_EXIT_CODE`], so a supervisor
//! restarts it and recovery from the disk, the tested path, takes over. The one exception is
//! a panic in an application's request handler (`production::handlers`): it fails that
//! request, and the node goes on. A process that kept
//! running without its node thread would answer every client "the node has stopped" forever.

/// The exit code of a process that ended on a panic.
pub const PANIC_EXIT_CODE: i32 = 70;

/// Installs the panic hook: the standard report (message, location, backtrace when asked
/// for), an error in the log, then the exit. Call once, before starting threads.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if crate::production::handlers::in_handler() {
            // A request handler's panic fails its request only (the node's runtime catches
            // it and answers the caller).
            tracing::warn!(%info, "a request handler panicked");
            return;
        }
        report(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(thread = name, %info, "a thread panicked: the process exits so that a supervisor restarts it and it recovers from its disk");
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHILD: &str = "BOROUGH_FAIL_FAST_CHILD";

    /// Runs in a child process: a panic on a side thread must end the whole process at once,
    /// while the main thread would otherwise go on and exit cleanly.
    #[test]
    #[allow(clippy::disallowed_methods)] // the child reads its role from the environment
    fn a_panic_on_any_thread_ends_the_process_with_its_code() {
        if std::env::var_os(CHILD).is_some() {
            exit_on_panic();
            #[allow(clippy::disallowed_methods)] // the test stands for the shell's threads
            let side = std::thread::spawn(|| panic!("planted panic on the node thread"));
            let _ = side.join();
            std::thread::sleep(std::time::Duration::from_secs(5));
            std::process::exit(0);
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "production::fail_fast::tests::a_panic_on_any_thread_ends_the_process_with_its_code",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(PANIC_EXIT_CODE), "{stderr}");
        assert!(
            stderr.contains("planted panic on the node thread"),
            "{stderr}"
        );
    }
}
