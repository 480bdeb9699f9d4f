//! `loadtest idle`: open N connections over T tenants, hold them, close them.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::clients::{Shared, drive_all};
use super::report::Report;
use super::{IdleArgs, LoadtestError, connect_phase};

/// Runs the scenario; every connection is read while held (so pings are answered) and closed
/// at the end.
pub async fn run(args: &IdleArgs) -> Result<Report, LoadtestError> {
    let (streams, mut report) = connect_phase("idle", &args.common).await?;
    let shared = Shared::new();
    let stop = CancellationToken::new();
    let tasks = drive_all(streams, &shared, &stop, None);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_secs.max(0.0))).await;
    stop.cancel();
    for task in tasks {
        if let Ok(tally) = task.await
            && tally.ended.is_some()
        {
            report.dropped_connections += 1;
        }
    }
    Ok(report)
}
