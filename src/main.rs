//! The `herald` binary: logging set-up and the command line, nothing else.

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    std::process::exit(herald::cli::main(std::env::args().skip(1).collect()));
}
