//! How commands report: plain text for people, or with `--json` the same
//! envelope as the admin API.

use crate::config::ConfigError;
use crate::manage::ManageError;
use crate::store::StoreError;
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

/// A failed command: its message, its error code, and whether to print JSON.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: &'static str,
    pub json: bool,
    pub exit: u8,
}

impl Failure {
    /// A bad config file (exit 2).
    pub fn config(e: ConfigError) -> Failure {
        Failure { message: e.to_string(), code: "invalid_config", json: false, exit: 2 }
    }

    /// A store that cannot be opened or reached (exit 1).
    pub fn store(e: StoreError) -> Failure {
        Failure { message: e.to_string(), code: "store_unavailable", json: false, exit: 1 }
    }

    /// A refused operation (exit 1), or input that is not valid (exit 2,
    /// a usage error, as clap's own are).
    pub fn manage(e: ManageError, json: bool) -> Failure {
        let code = match &e {
            ManageError::Invalid { .. } => "invalid_request",
            ManageError::NotFound(_) => "not_found",
            ManageError::Conflict(_) => "conflict",
            ManageError::RoleInUse { .. } => "role_in_use",
            ManageError::VersionConflict { .. } => "version_conflict",
            ManageError::Store(_) => "store_unavailable",
        };
        let exit = if matches!(e, ManageError::Invalid { .. }) { 2 } else { 1 };
        Failure { message: e.to_string(), code, json, exit }
    }

    /// Prints the failure and gives the exit code.
    pub fn report(self) -> ExitCode {
        if self.json {
            println!("{}", crate::envelope::failure(self.code, self.message));
        } else {
            eprintln!("error: {}", self.message);
        }
        ExitCode::from(self.exit)
    }
}

/// Prints `{"success": true, "data": ..., "meta": ...}`.
/// Writes an export to `file`, or to standard output without one.
pub fn write_export(file: Option<&Path>, text: &str) -> Result<(), Failure> {
    match file {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(path) => std::fs::write(path, text).map_err(|e| Failure {
            message: format!("cannot write {}: {e}", path.display()),
            code: "io_error",
            json: false,
            exit: 1,
        }),
    }
}

/// The whole of `file`, or of standard input for `-`.
pub fn read_input(file: &Path) -> Result<String, Failure> {
    let failed = |e: std::io::Error| Failure {
        message: format!("cannot read {}: {e}", file.display()),
        code: "io_error",
        json: false,
        exit: 1,
    };
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text).map_err(failed)?;
        return Ok(text);
    }
    std::fs::read_to_string(file).map_err(failed)
}

pub fn print_json(data: Value, meta: Value) {
    println!("{}", crate::envelope::success(data, Some(meta)));
}

/// Prints rows as aligned columns.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0))).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}
