//! The `license-gateway` binary: parse, set up logging, dispatch, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use license_gateway::commands::{self, CommandError};
use license_gateway::config::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            // One line, naming the variable (flags' value names are the variable names).
            let rendered = e.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    license_gateway::telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: Result<(), CommandError> = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve(args).await,
            Command::Token(args) => commands::token(&args).map(|t| println!("{t}")),
            Command::Publish(args) => commands::publish(&args).await.map(|id| println!("{id}")),
            Command::Worker(args) => commands::worker(&args).await,
            Command::Healthcheck(args) => commands::healthcheck(&args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
