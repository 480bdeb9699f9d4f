//! The `license-gateway` binary: parse, set up logging, dispatch, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use license_gateway::cli::{Cli, Command};
use license_gateway::commands::{self, CommandError};
use license_gateway::telemetry::ServiceIdentity;

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
    let identity = service_identity(&cli.command);
    let telemetry = match license_gateway::telemetry::init(cli.log_format, &identity) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // The load generator is one thread by design (it shares the machine with the server).
    let runtime = if matches!(cli.command, Command::Loadtest(_)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result: Result<(), CommandError> = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => commands::serve(args, identity.instance_id.clone()).await,
            Command::Token(args) => commands::token(&args).map(|t| println!("{t}")),
            Command::Publish(args) => commands::publish(&args).await.map(|id| println!("{id}")),
            Command::Worker(args) => commands::worker(&args).await,
            Command::Healthcheck(args) => commands::healthcheck(&args).await,
            Command::Openapi => {
                println!("{}", commands::openapi());
                Ok(())
            }
            Command::Loadtest(args) => {
                let local = tokio::task::LocalSet::new();
                local
                    .run_until(license_gateway::loadtest::run(args))
                    .await
                    .map_err(CommandError::from)
            }
        }
    });
    // Spans still queued (all of a short `publish`) are exported once the runtime is gone.
    drop(runtime);
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The trace resource's identity. A node's instance id is its node id (`NODE_ID`, or made up
/// here, before the command runs), so logs, traces and stats name the node alike.
fn service_identity(command: &Command) -> ServiceIdentity {
    let role = match command {
        Command::Serve(_) => "serve",
        Command::Token(_) => "token",
        Command::Publish(_) => "publish",
        Command::Worker(_) => "worker",
        Command::Healthcheck(_) => "healthcheck",
        Command::Loadtest(_) => "loadtest",
        Command::Openapi => "openapi",
    };
    let instance_id = match command {
        Command::Serve(args) => args
            .node_id
            .clone()
            .unwrap_or_else(commands::default_node_id),
        _ => commands::default_node_id(),
    };
    ServiceIdentity { role, instance_id }
}
