use clap::Parser;
use tracing_subscriber::EnvFilter;

use entrovid::cli::Cli;
use entrovid::commands;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The log filter is the one setting read outside `Settings`: logging must work before
    // settings can be parsed (and report why they could not be).
    let filter = EnvFilter::try_from_env("ENTROVID_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let settings = match commands::load_settings(&cli, std::env::vars()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("entrovid: {error:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("entrovid: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli, settings)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("entrovid: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
