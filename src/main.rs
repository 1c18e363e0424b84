//! The `borough` binary. The cluster shell (TCP transport, HTTP API, `borough start`) arrives
//! with the cluster issue; until then the binary reports what it is and points at the
//! simulator, which runs the same node code.

fn main() {
    let mut arguments = std::env::args().skip(1);
    match arguments.next().as_deref() {
        Some("--version") | Some("version") => println!("borough {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!(
                "borough {}: the cluster shell is not built yet; run the node inside the \
                 simulator with `cargo run -p borough-sim -- sweep scenarios --seeds 0..20`",
                env!("CARGO_PKG_VERSION")
            );
            std::process::exit(2);
        }
    }
}
